"""``load``: one entry point from a name, a card or a path to a raw ``(image, target)`` dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bitkit.data.base import ImageDataset
from bitkit.data.cards import DataCard, get_card


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.startswith((".", "~")) or Path(s).expanduser().exists()


def load(source: str | DataCard | os.PathLike, split: str = "train", *,
         path: str | os.PathLike | None = None, **options: Any) -> ImageDataset:
    """A map-style dataset of raw ``(image, target)`` pairs with ``num_classes``,
    ``class_names``, ``card``, ``multi_label``, ``labels()`` and ``example_id(i)``.

    Args:
        source: a card name (``"cifar10"``, ``"world-objects"``), a :class:`DataCard`, or a
            path to local data (imagefolder, parquet, arrow, save_to_disk).
        split: a role from the card's ``splits`` (``train``, ``val``, ``test``).
        path: local copy of a card's dataset (instead of the hub).
        options: for embedded data: ``size``, ``seed``, ``image_size`` and generator options
            (``label_noise``, ``context``).
    """
    from bitkit.data import sources

    if isinstance(source, os.PathLike) or (isinstance(source, str) and _looks_like_path(source)):
        hf = sources.open_local(source, split)
        return sources.HFImageDataset(hf, sources.local_card(source, hf, split), split)
    card = source if isinstance(source, DataCard) else get_card(str(source))
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
