"""``load``: one entry point from a name, a card or a path to a raw ``(image, target)`` dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bitkit.data.base import ImageDataset
from bitkit.data.cards import VTAB_PARTS, DataCard, get_card


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.startswith((".", "~")) or Path(s).expanduser().exists()


def load(source: str | DataCard | os.PathLike, split: str = "train", *,
         path: str | os.PathLike | None = None, **options: Any) -> ImageDataset:
    """A map-style dataset of raw ``(image, target)`` pairs with ``num_classes``,
    ``class_names``, ``card``, ``multi_label``, ``labels()`` and ``example_id(i)``.

    Args:
        source: a card name (``"cifar10"``, ``"world-objects"``), a :class:`DataCard`, or a
            path to local data (imagefolder, parquet, arrow, save_to_disk).
        split: a role from the card's ``splits`` (``train``, ``val``, ``test``). A VTAB card
            without a ``test`` role (its VTAB test set is a slice, e.g. dSprites'
            ``train[663552:]``) reads ``test`` as :func:`vtab1k` does.
        path: local copy of a card's dataset (instead of the hub).
        options: for embedded data: ``size``, ``seed``, ``image_size`` and generator options
            (``label_noise``, ``context``).
    """
    from bitkit.data import sources

    if isinstance(source, os.PathLike) or (isinstance(source, str) and _looks_like_path(source)):
        hf = sources.open_local(source, split)
        return sources.HFImageDataset(hf, sources.local_card(source, hf, split), split)
    card = source if isinstance(source, DataCard) else get_card(str(source))
    if card.source.kind == "bundled":
        raise ValueError(f"{card.name} is {len(card.images)} files bundled with bitkit, not a "
                         f"labelled dataset: read them with bitkit.data.bundled.photos("
                         f"{card.name!r}) ({card.title})")
    if split not in card.splits and split == "test" and card.vtab_splits is not None:
        return vtab1k(card, "test", path=path, **options)
    if split not in card.splits:
        raise ValueError(f"{card.name} has no split {split!r}; use one of {list(card.splits)} "
                         f"(the paper evaluates on {card.eval_split!r}).")
    kind = card.source.kind
    if options and kind != "embedded":
        raise ValueError(f"options {sorted(options)} only apply to embedded datasets; "
                         f"{card.name} is {kind}")
    if kind == "unavailable":
        raise ValueError(f"{card.title} is not public: its card is for reference only "
                         f"({card.source.note or card.description}).")
    if kind == "collection":
        raise ValueError(f"{card.name} is a benchmark of {len(card.source.members)} datasets; "
                         f"load one of them: {', '.join(card.source.members)}")
    if kind == "embedded":
        from bitkit.data import world

        return world.build(card, split, **options)
    if kind == "sklearn":
        from bitkit.data.digits import DigitsDataset

        if card.source.generator != "load_digits":
            raise ValueError(f"{card.path}: field 'source.generator': expected 'load_digits' "
                             f"(the only scikit-learn image dataset), got "
                             f"{card.source.generator!r}")

        return DigitsDataset(card, split)
    return sources.load_hf(card, split, path)


def vtab1k(task: str | DataCard, *parts: str, path: str | os.PathLike | None = None,
           **options: Any) -> ImageDataset | tuple[ImageDataset, ...]:
    """VTAB-1k's sets of ``task`` as VTAB defines them (the card's ``vtab_splits``).

    ``parts``: any of ``train800`` (fit), ``val200`` (select hyper-parameters),
    ``train800val200`` (retrain on all 1000) and ``test``; one part gives one dataset, several
    a tuple (each source split is read once). For CIFAR-100 (VTAB's ``cifar.py``) train800 is
    ``train[:800]``, val200 ``train[45000:45200]``, test ``test``; for DTD val200 is
    ``validation[:200]``; for dSprites test is ``train[663552:]``; ``bitkit cards <task>``
    shows a card's four. The embedded world tasks use VTAB's most common rule: ``train[:800]``,
    ``train[800:1000]``, ``test``. A slice is a position range in the source split as given:
    the card's ``vtab_splits.note`` says when that is VTAB's examples (same order and sizes as
    TFDS; another size warns once per split, :class:`~bitkit.data.fewshot.SplitSizeWarning`).
    ``path`` and ``options`` as for :func:`load` (a local copy; ``size=`` etc. for embedded
    data).

    >>> train800, val200, test = vtab1k("world-count", "train800", "val200", "test")
    >>> train800.indices[[0, -1]].tolist(), val200.indices[[0, -1]].tolist()
    ([0, 799], [800, 999])
    """
    from bitkit.data import fewshot, sources

    card = task if isinstance(task, DataCard) else get_card(str(task))
    v = fewshot.vtab_splits_of(card)
    if not parts:
        raise ValueError(f"vtab1k({card.name!r}, ...): name the set(s) to load: "
                         f"{', '.join(VTAB_PARTS)}")
    needed = dict.fromkeys(s.split for p in parts for s in v.slices(p))
    source = {}
    for name in needed:
        role = card.role_of(name)
        if role is not None:
            source[name] = load(card, role, path=path, **options)
        else:  # a source split no role names (DTD's validation, SmallNORB's test)
            if options:
                raise ValueError(f"options {sorted(options)} only apply to embedded datasets; "
                                 f"{card.name} is {card.source.kind}")
            source[name] = sources.load_source_split(card, name, path)
    fewshot.check_source_sizes(card, source)
    out = tuple(fewshot.vtab_part(card, p, source) for p in parts)
    return out[0] if len(out) == 1 else out
