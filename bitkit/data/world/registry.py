"""The world's generators by name: :func:`register` and :func:`build`.

A card's ``source.generator`` names the class that draws it (``"upstream"``, ``"fine"``, ...).
Each generator module registers its classes here when it is imported, and :func:`build` looks
them up. This module imports no generator, so a generator module can build another world
dataset (``duplicates`` draws a host task's own pictures) without an import cycle. The package
``bitkit.data.world`` imports every generator module, so all of them are registered before any
submodule of the package can be used.
"""

from __future__ import annotations

import difflib
import inspect

from bitkit.data.cards import DataCard
from bitkit.data.world.common import WorldDataset

#: Generator name (a card's ``source.generator``) -> class, in registration order.
GENERATORS: dict[str, type[WorldDataset]] = {}


def register(**generators: type[WorldDataset]) -> None:
    """Make each class buildable under its name: ``register(fine=FineTask, ...)``."""
    for name, cls in generators.items():
        if GENERATORS.get(name, cls) is not cls:
            raise ValueError(f"world generator {name!r} is already {GENERATORS[name].__name__}")
        GENERATORS[name] = cls


def _options(cls: type) -> list[str]:
    """The keyword options of a generator: its ``__init__``'s, and its bases' when it passes
    ``**kw`` on to them."""
    groups: list[list[str]] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        groups.append([p.name for p in params if p.kind is p.KEYWORD_ONLY])
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    names: list[str] = []  # the base's options first (size, seed, image_size), then the rest
    for group in reversed(groups):
        names += [n for n in group if n not in names]
    return names


def build(card: DataCard, split: str, **options) -> WorldDataset:
    """The world dataset a card's ``source.generator`` names, with the card's ``source.params``
    as defaults for ``options`` (size, seed, image_size, label_noise, test_label_noise, ...)."""
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
