"""Files bundled with bitkit: the photographs of the ``photos`` card, available offline.

A card with ``source.kind: bundled`` names a folder inside ``bitkit/data/`` (``source.folder``)
and credits every file in it on its ``images`` list: title, author, the licence exactly as its
source states it, where bitkit's copy came from and what bitkit changed
(``data_cards/photos.yaml``). They are files to look at and predict, not a labelled dataset, so
``bitkit.data.load`` refuses them and :func:`photos` reads them (lesson 09 predicts their
ImageNet top-5 with a released BiT file).

>>> from bitkit.data import bundled
>>> [p.name for p in bundled.photos()]
['astronaut', 'camera', 'chelsea', 'china', 'coffee', 'rocket']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from bitkit.data.cards import BUNDLED_DIR, DataCard, ImageCredit, get_card
from bitkit.data.transforms import to_uint8


@dataclass(frozen=True)
class Photo:
    """One bundled photograph: its name (the file name without suffix), the pixels as a uint8
    ``(3, H, W)`` RGB tensor (grey photographs repeated to three channels) and its credit."""

    name: str
    image: torch.Tensor
    credit: ImageCredit

    @property
    def caption(self) -> str:
        """``title (author, licence's first words)``: a short credit line for a figure."""
        licence = self.credit.license.split(". ")[0]
        return f"{self.credit.title} ({self.credit.author}, {licence})"


def _bundled_card(card: str | DataCard) -> DataCard:
    c = card if isinstance(card, DataCard) else get_card(card)
    if c.source.kind != "bundled":
        raise ValueError(f"{c.name} is a {c.source.kind} card, not files bundled with bitkit; "
                         "load it with bitkit.data.load")
    return c


def folder(card: str | DataCard = "photos") -> Path:
    """The folder a bundled card's files live in (inside the installed package)."""
    return BUNDLED_DIR / str(_bundled_card(card).source.folder)


def photos(card: str | DataCard = "photos") -> list[Photo]:
    """Every file of a bundled card, in the card's order, with its credit."""
    c = _bundled_card(card)
    out = []
    for credit in c.images:
        with Image.open(folder(c) / credit.file) as im:
            out.append(Photo(Path(credit.file).stem, to_uint8(im), credit))
    return out
