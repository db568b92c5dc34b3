"""The embedded world: procedural, deterministic data for every notebook, no network, no disk.

``bitkit.data.load("world-upstream", "train", size=1_000_000)`` and friends build these; the
cards in ``data_cards/world-*.yaml`` describe each one. See ``upstream``, ``downstream``,
``duplicates`` and ``objects`` for the design.
"""

from __future__ import annotations

from bitkit.data.cards import DataCard
from bitkit.data.world.common import WorldDataset
from bitkit.data.world.downstream import GENERATORS as _DOWNSTREAM
from bitkit.data.world.duplicates import DuplicatePair, duplicate_of, pairs
from bitkit.data.world.objects import Background, ForegroundObjects, backgrounds
from bitkit.data.world.upstream import UpstreamWorld

#: Bumped whenever a change draws different images for the same (seed, index); pre-training
#: caches include it so a model trained on an older world is never silently reused.
#: 2: upstream close-ups and flocks (``upstream`` module docstring).
#: 3: ``world-fine`` classes are look-alike upstream shapes, not stars with 4-7 points.
VERSION = 3

GENERATORS: dict[str, type[WorldDataset]] = {
    "upstream": UpstreamWorld, "foregrounds": ForegroundObjects, **_DOWNSTREAM,
}


def build(card: DataCard, split: str, **options) -> WorldDataset:
    """The world dataset a card's ``source.generator`` names, with the card's ``source.params``
    as defaults for ``options`` (size, seed, image_size, label_noise, ...)."""
    if card.source.generator not in GENERATORS:
        raise ValueError(f"{card.path}: field 'source.generator': expected one of "
                         f"{', '.join(GENERATORS)}, got {card.source.generator!r}")
    cls = GENERATORS[card.source.generator]
    return cls(card, split, **{**card.source.params, **options})


__all__ = ["Background", "DuplicatePair", "ForegroundObjects", "GENERATORS", "UpstreamWorld",
           "VERSION", "WorldDataset", "backgrounds", "build", "duplicate_of", "pairs"]
