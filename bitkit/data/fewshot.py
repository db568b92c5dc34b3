"""Few-shot subsets: balanced, seeded, nested across k; and VTAB-1k's 800/200 split.

The paper transfers with k = 1, 5, 10, 25, ... examples per class over several random subsets
(section 3.5, Figure 2: 5 random subsets, the median reported). The released PyTorch code did not seed
these subsets; here a subset is a pure function of (labels, k, seed) and subsets are *nested*
within a seed: the 1-shot set is inside the 5-shot set, which is inside the 10-shot set. Each
class is shuffled once per seed and k-shot takes the first k of each class, so a curve over k
measures more data, not different data.

VTAB-1k (section 3.2; supplementary A) trains on 1000 examples, 800 train + 200 validation for
hyper-parameter selection. Which examples those are VTAB defines task by task (Zhai et al. 2019,
google-research/task_adaptation): ``train800`` is the first 800 of the train split, ``val200``
200 from the validation split or from a later slice of train, ``test`` the test split or a slice.
The cards carry these slices (``vtab_splits``); :func:`vtab1k_split` applies them to a loaded
train split (``how="official"``, the default) or draws a seeded random 800/200 instead
(``how="random"``), and ``bitkit.data.vtab1k`` loads any of the four sets from the card.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from bitkit.data.base import ImageDataset, JoinedDataset, SubsetDataset
from bitkit.data.cards import DataCard, VtabSplits


def _class_order(labels: np.ndarray, seed: int, num_classes: int) -> list[np.ndarray]:
    """Per class, its example indices in a seeded random order (one permutation per seed)."""
    rng = np.random.default_rng([seed, 0xF5])
    perm = rng.permutation(labels.size)
    by_class = perm[np.argsort(labels[perm], kind="stable")]
    counts = np.bincount(labels, minlength=num_classes)
    return np.split(by_class, np.cumsum(counts)[:-1])


def _first_readable(idx: np.ndarray, k: int,
                    readable: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, int]:
    """The first ``k`` of ``idx`` that ``readable`` accepts (checked k at a time), and how many
    were passed over as unreadable."""
    picked: list[np.ndarray] = []
    have, pos = 0, 0
    while have < k and pos < idx.size:
        chunk = idx[pos:pos + k - have]
        good = chunk[np.asarray(readable(chunk), dtype=bool)]
        picked.append(good)
        have, pos = have + good.size, pos + chunk.size
    out = np.concatenate(picked) if picked else idx[:0]
    return out, pos - out.size


def kshot_indices(labels: Sequence[int] | np.ndarray, k: int, seed: int = 0, *,
                  num_classes: int | None = None,
                  class_names: Sequence[str] | None = None,
                  readable: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Indices of a balanced k-shot subset (``k * classes`` of them, sorted).

    ``readable(indices) -> bool array`` (e.g. ``dataset.readable``) skips examples whose image
    cannot be decoded: each class takes its first k *readable* examples in the seeded order, so
    subsets stay balanced and nested. Raises ``ValueError`` naming the class when a class has
    fewer than ``k`` (readable) examples.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError("k-shot subsets need single-label data; per-class counts are not "
                         "defined for multi-label targets")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (examples per class); got {k!r}")
    if y.size == 0:
        raise ValueError("k-shot subsets need labelled examples; got an empty label array")
    n_cls = int(num_classes if num_classes is not None else y.max() + 1)
    bad = (y < 0) | (y >= n_cls)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} label(s) outside 0..{n_cls - 1} (e.g. "
                         f"{sorted(set(y[bad].tolist()))[:5]}): every example of a k-shot pool "
                         f"needs a class id (-1 usually means unlabelled: use a labelled split)")
    order = _class_order(y.astype(np.int64), seed, n_cls)
    for c, idx in enumerate(order):
        if idx.size < k:
            name = f"{class_names[c]!r} (id {c})" if class_names is not None else f"id {c}"
            raise ValueError(f"class {name} has {idx.size} example(s), fewer than k={k}; "
                             f"use k <= {min(i.size for i in order)} for this dataset")
    if readable is None:
        return np.sort(np.concatenate([idx[:k] for idx in order]))
    chosen = []
    for c, idx in enumerate(order):
        good, bad = _first_readable(idx, k, readable)
        if good.size < k:
            name = f"{class_names[c]!r} (id {c})" if class_names is not None else f"id {c}"
            raise ValueError(f"class {name} has {good.size} readable example(s) ({bad} "
                             f"unreadable skipped), fewer than k={k}; use a smaller k or "
                             "repair the images (dataset.corrupt_report() lists them)")
        chosen.append(good)
    return np.sort(np.concatenate(chosen))


def kshot(dataset: ImageDataset, k: int, seed: int = 0) -> SubsetDataset:
    """A balanced k-shot subset of ``dataset`` (keeps its card, class names and ids).

    Only readable examples are picked (``dataset.readable``): an unreadable one would be
    replaced by its neighbour, of another class, when loaded (``bitkit.data.corrupt``)."""
    if dataset.multi_label:
        raise ValueError(f"{dataset.card.name} is multi-label: k-shot subsets need one label "
                         "per example")
    idx = kshot_indices(dataset.targets, k, seed, num_classes=dataset.num_classes,
                        class_names=dataset.class_names,
                        readable=getattr(dataset, "readable", None))
    return SubsetDataset(dataset, idx, tag=f"{k}-shot seed {seed}")


def kshot_family(dataset: ImageDataset, ks: Sequence[int], seeds: Sequence[int] = (0, 1, 2, 3, 4)
                 ) -> dict[tuple[int, int], SubsetDataset]:
    """``{(k, seed): subset}`` for every k and seed (paper: 5 seeds, report the median);
    nested across k within each seed."""
    return {(k, s): kshot(dataset, k, s) for s in seeds for k in sorted(ks)}


class SplitSizeWarning(UserWarning):
    """A source split's size is not the one a card's VTAB slices were computed for
    (``vtab_splits.sizes``): the slices then pick positions in another list of examples, which
    are not VTAB's."""


def vtab_splits_of(card: DataCard) -> VtabSplits:
    """``card.vtab_splits``, or a ``ValueError`` that says where the VTAB-1k sets exist."""
    if card.vtab_splits is None:
        raise ValueError(f"{card.name} has no vtab_splits (VTAB-1k's own train800/val200/test "
                         f"slices): the vtab-* cards and the embedded world-* tasks have them. "
                         f"For any dataset, vtab1k_split(dataset, how='random', seed=0) draws "
                         f"a seeded random 800/200 of it.")
    return card.vtab_splits


def check_source_sizes(card: DataCard, source: Mapping[str, ImageDataset]) -> None:
    """A :class:`SplitSizeWarning` for each given source split whose size is not the one the
    card's VTAB slices were computed for (``vtab_splits.sizes``)."""
    v = vtab_splits_of(card)
    for name, ds in source.items():
        want = v.sizes.get(name)
        if want is not None and want != len(ds):
            used = ", ".join(str(s) for p in ("train800", "val200", "test")
                             for s in v.slices(p) if s.split == name)
            warnings.warn(f"{card.name}: split {name!r} has {len(ds):,} examples, but VTAB's "
                          f"slices were computed for {want:,} (vtab_splits.sizes, TFDS's "
                          f"split): {used} are the same positions of another list of examples, "
                          f"not VTAB's", SplitSizeWarning, stacklevel=3)


def vtab_part(card: DataCard, part: str, source: Mapping[str, ImageDataset]) -> ImageDataset:
    """VTAB-1k's ``part`` (train800, val200, train800val200 or test) of ``card``, cut from its
    source splits ``source`` (source split name -> that whole split) as ``card.vtab_splits``
    says: a :class:`SubsetDataset` of the slices' positions in the order written
    (``train[:800]+train[45000:45200]`` is 0..799 then 45000..45199), or a
    :class:`JoinedDataset` where the slices read two splits. A slice past a split's end is an
    error, as in TFDS (sizes are checked by :func:`check_source_sizes`)."""
    v = vtab_splits_of(card)
    slices = v.slices(part)
    pieces = []
    for s in slices:
        if s.split not in source:
            raise ValueError(f"{card.name}: vtab_splits.{part} = {v.text(part)!r} reads split "
                             f"{s.split!r}, not given (given: {', '.join(source)})")
        ds = source[s.split]
        try:
            positions = s.resolve(len(ds))
        except ValueError as e:
            raise ValueError(f"{card.name}: vtab_splits.{part} = {v.text(part)!r}: {e}") \
                from None
        pieces.append((ds, np.arange(positions.start, positions.stop, dtype=np.int64), s))
    tag = f"{part} = {v.text(part)} (VTAB-1k)"
    if all(ds is pieces[0][0] for ds, _, _ in pieces):
        return SubsetDataset(pieces[0][0], np.concatenate([i for _, i, _ in pieces]), tag=tag)
    return JoinedDataset([SubsetDataset(ds, i, tag=str(s)) for ds, i, s in pieces], tag=tag)


def vtab1k_split(dataset: ImageDataset, seed: int | None = None, train: int = 800,
                 val: int = 200, *, how: str = "official"
                 ) -> tuple[ImageDataset, ImageDataset]:
    """VTAB-1k's ``train800`` / ``val200`` of a loaded train split; their union (train800val200)
    is the 1000-example training set used after hyper-parameter selection.

    ``how="official"`` (the default): the slices VTAB defines for the task, from the card's
    ``vtab_splits`` (e.g. ``train[:800]`` and ``train[45000:45200]`` for CIFAR-100; the
    embedded world tasks: ``train[:800]`` and ``train[800:1000]``), with VTAB's sizes; no seed.
    Where val200 comes from another split (DTD's ``validation[:200]``), load both with
    ``bitkit.data.vtab1k(task, "train800", "val200", path=...)`` instead.

    ``how="random"``: a seeded random ``train + val`` examples of ``dataset``, split
    ``train``/``val`` (``seed`` None is 0), for any dataset and any sizes; not VTAB's examples.
    """
    if how == "random":
        seed = 0 if seed is None else seed
        if train < 1 or val < 0:
            raise ValueError(f"need train >= 1 and val >= 0; got {train}, {val}")
        if len(dataset) < train + val:
            raise ValueError(f"{dataset.card.name}:{dataset.split} has {len(dataset)} examples, "
                             f"fewer than {train} + {val}")
        pick = np.random.default_rng([seed, 0x1000]).permutation(len(dataset))[: train + val]
        return (SubsetDataset(dataset, np.sort(pick[:train]), tag=f"train{train} random seed {seed}"),
                SubsetDataset(dataset, np.sort(pick[train:]), tag=f"val{val} random seed {seed}"))
    if how != "official":
        raise ValueError(f"how must be 'official' (VTAB's own slices) or 'random' (a seeded "
                         f"random split); got {how!r}")
    card = dataset.card
    v = vtab_splits_of(card)
    if seed is not None:
        raise ValueError(f"seed={seed} draws a random split: pass how='random' with it; "
                         f"how='official' takes VTAB's own slices of {card.name}, which have no "
                         f"seed")
    sizes = card.vtab_split or (800, 200)
    if (train, val) != tuple(sizes):
        raise ValueError(f"how='official' takes VTAB's {sizes[0]}/{sizes[1]} of {card.name}; "
                         f"other sizes ({train}/{val}) need how='random'")
    here = card.splits.get(dataset.split, dataset.split)
    other = [s.split for p in ("train800", "val200") for s in v.slices(p) if s.split != here]
    if other:
        raise ValueError(f"{card.name}: VTAB's train800 = {v.text('train800')!r} and val200 = "
                         f"{v.text('val200')!r} are not both slices of the given "
                         f"{dataset.split!r} split (also: {', '.join(dict.fromkeys(other))}); "
                         f"load them with bitkit.data.vtab1k({card.name!r}, 'train800', "
                         f"'val200', path=...)")
    source = {here: dataset}
    check_source_sizes(card, source)
    return vtab_part(card, "train800", source), vtab_part(card, "val200", source)

