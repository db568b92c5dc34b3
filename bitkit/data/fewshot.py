"""Few-shot subsets: balanced, seeded, nested across k; and VTAB-1k's 800/200 split.

The paper transfers with k = 1, 5, 10, 25, ... examples per class over several random subsets
(section 4.1, Figure 2; FACTS: report the median of 5). The released PyTorch code did not seed
these subsets; here a subset is a pure function of (labels, k, seed) and subsets are *nested*
within a seed: the 1-shot set is inside the 5-shot set, which is inside the 10-shot set. Each
class is shuffled once per seed and k-shot takes the first k of each class, so a curve over k
measures more data, not different data.

VTAB-1k (section 3.2; supplementary A) trains on 1000 examples, 800 train + 200 validation for
hyper-parameter selection; :func:`vtab1k_split` draws them from a seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from bitkit.data.base import ImageDataset, SubsetDataset


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


def vtab1k_split(dataset: ImageDataset, seed: int = 0, train: int = 800, val: int = 200
                 ) -> tuple[SubsetDataset, SubsetDataset]:
    """VTAB-1k's ``train800`` / ``val200`` from a seed: a random 1000 examples, split 800/200.
    Their union is the 1000-example training set used after hyper-parameter selection."""
    if train < 1 or val < 0:
        raise ValueError(f"need train >= 1 and val >= 0; got {train}, {val}")
    if len(dataset) < train + val:
        raise ValueError(f"{dataset.card.name}:{dataset.split} has {len(dataset)} examples, "
                         f"fewer than {train} + {val}")
    pick = np.random.default_rng([seed, 0x1000]).permutation(len(dataset))[: train + val]
    return (SubsetDataset(dataset, np.sort(pick[:train]), tag=f"train{train} seed {seed}"),
            SubsetDataset(dataset, np.sort(pick[train:]), tag=f"val{val} seed {seed}"))
