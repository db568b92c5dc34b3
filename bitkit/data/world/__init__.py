"""The embedded world: procedural, deterministic data for every notebook, no network, no disk.

``bitkit.data.load("world-upstream", "train", size=1_000_000)`` and friends build these; the
cards in ``data_cards/world-*.yaml`` describe each one. See ``upstream``, ``downstream``,
``duplicates`` and ``objects`` for the design.
"""

from __future__ import annotations

import difflib
import inspect

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
#: 4: multi-label upstream images hold 1.26 labelled objects on average (JFT's), not 2.0.
#: 5: near-duplicates planted in world-fine, world-texture and world-count too (``duplicates``).
VERSION = 5

GENERATORS: dict[str, type[WorldDataset]] = {
    "upstream": UpstreamWorld, "foregrounds": ForegroundObjects, **_DOWNSTREAM,
}


def _options(cls: type) -> list[str]:
    """The keyword options of a generator: its ``__init__``'s, and its bases' when it passes
    ``**kw`` on to them."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names += [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def build(card: DataCard, split: str, **options) -> WorldDataset:
    """The world dataset a card's ``source.generator`` names, with the card's ``source.params``
    as defaults for ``options`` (size, seed, image_size, label_noise, ...)."""
    if card.source.generator not in GENERATORS:
        raise ValueError(f"{card.path}: field 'source.generator': expected one of "
                         f"{', '.join(GENERATORS)}, got {card.source.generator!r}")
    cls = GENERATORS[card.source.generator]
    known = _options(cls)
    for where, given in (("option ", options),
                         (f"{card.path}: field 'source.params': ", card.source.params)):
        for name in given:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{where}{name!r} is not a {card.name} option.{hint} "
                                 f"Known: {', '.join(known)}")
    return cls(card, split, **{**card.source.params, **options})


__all__ = ["Background", "DuplicatePair", "ForegroundObjects", "GENERATORS", "UpstreamWorld",
           "VERSION", "WorldDataset", "backgrounds", "build", "duplicate_of", "pairs"]
