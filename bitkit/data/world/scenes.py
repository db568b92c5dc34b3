"""The natural-like scene: one textured, coloured object on a background.

Shared by the ``world-objects`` task and by the planted near-duplicates (``duplicates``), which
must draw exactly the same kind of image on both sides of a pair.
"""

from __future__ import annotations

import numpy as np

from bitkit.data.world import render, rng
from bitkit.data.world.common import finish, object_slot, palette_colours
from bitkit.data.world.taxonomy import PALETTES, habitat

_PAL = np.array(PALETTES)


def natural_scene(keys: np.ndarray, combos: np.ndarray, size: int,
                  context: float = 0.8) -> np.ndarray:
    """uint8 (B, 3, S, S): object ``combos[b] = (shape, texture, palette)`` on a background
    that is its habitat with probability ``context``."""
    s, t, p = combos[:, 0], combos[:, 1], combos[:, 2]
    u = rng.uniform(keys, 8, salt=4)
    bg = np.where(u[:, 0] < context, habitat(s, t), (u[:, 1] * 8).astype(np.int64))
    canvas = render.backgrounds(bg, rng.uniform(keys, 4, salt=5), size)
    uo = rng.uniform(keys, 40, salt=10)
    radius = 0.42 + 0.23 * uo[:, 30]
    pal = _PAL[p]
    render.composite(canvas, object_slot(
        uo, shape=s, texture=t, palette_rgb=palette_colours(pal[:, 0], pal[:, 1], uo[:, 33:39]),
        cx=(0.95 - radius) * (uo[:, 31] - 0.5), cy=(0.95 - radius) * (uo[:, 32] - 0.5),
        radius=radius))
    return finish(canvas, keys)
