"""Who is who in the embedded world: upstream classes, their hierarchy, the held-out classes.

An upstream class is a combination (shape, texture, palette): 13 x 8 x 8 = 832 combinations.
Every combination with ``(shape + 2*texture + 3*palette) % 8 == 0`` (104 of them) is *held out*
of upstream; the natural-like downstream task draws its classes from these, so its classes are
unseen upstream yet built from primitives that upstream training must learn to tell apart
(exactly the kind of reuse transfer relies on). The remaining 728 are the upstream classes.

The hierarchy mirrors ImageNet-21k's WordNet tree and JFT's 18k-class hierarchy (section 3.1):
family (3) -> shape (13) -> shape+texture (104) -> class (728).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bitkit.data.world.render import BACKGROUND_NAMES, COLOUR_NAMES, SHAPE_FAMILIES, SHAPES, TEXTURES

#: Palettes: (main colour, second colour). Main colours are all different, so even solid
#: objects of different palettes are distinguishable.
PALETTES: tuple[tuple[int, int], ...] = tuple(
    (COLOUR_NAMES.index(a), COLOUR_NAMES.index(b)) for a, b in (
        ("red", "white"), ("orange", "blue"), ("yellow", "purple"), ("green", "white"),
        ("cyan", "red"), ("blue", "yellow"), ("purple", "green"), ("white", "orange"),
    )
)
N_SHAPES, N_TEXTURES, N_PALETTES = len(SHAPES), len(TEXTURES), len(PALETTES)


def palette_name(p: int) -> str:
    a, b = PALETTES[p]
    return f"{COLOUR_NAMES[a]}-{COLOUR_NAMES[b]}"


def combo_name(s: int, t: int, p: int) -> str:
    return f"{palette_name(p)} {TEXTURES[t]} {SHAPES[s]}"


def held_out(s: int, t: int, p: int) -> bool:
    """True for combinations reserved for downstream tasks (never an upstream class)."""
    return (s + 2 * t + 3 * p) % 8 == 0


def habitat(s: int | np.ndarray, t: int | np.ndarray) -> int | np.ndarray:
    """The background a (shape, texture) usually appears on: its *context*."""
    return (3 * s + t) % len(BACKGROUND_NAMES)


@dataclass(frozen=True)
class Taxonomy:
    """Upstream classes as arrays (index = class id) plus the hierarchy above them."""

    shape: np.ndarray
    texture: np.ndarray
    palette: np.ndarray
    names: list[str]
    parents: dict[str, np.ndarray]      # level -> parent id of each class at that level
    level_names: dict[str, list[str]]   # level -> names of that level's nodes

    @property
    def num_classes(self) -> int:
        return len(self.names)


@lru_cache(maxsize=1)
def upstream_taxonomy() -> Taxonomy:
    combos = [(s, t, p) for s in range(N_SHAPES) for t in range(N_TEXTURES)
              for p in range(N_PALETTES) if not held_out(s, t, p)]
    s, t, p = (np.array(x, dtype=np.int64) for x in zip(*combos, strict=True))
    family_of_shape = np.array([next(i for i, f in enumerate(SHAPE_FAMILIES.values())
                                     if name in f) for name in SHAPES])
    return Taxonomy(
        shape=s, texture=t, palette=p,
        names=[combo_name(*c) for c in combos],
        parents={"family": family_of_shape[s], "shape": s, "shape_texture": s * N_TEXTURES + t},
        level_names={
            "family": list(SHAPE_FAMILIES),
            "shape": list(SHAPES),
            "shape_texture": [f"{tx} {sh}" for sh in SHAPES for tx in TEXTURES],
        },
    )


@lru_cache(maxsize=4)
def held_out_combos(n: int) -> np.ndarray:
    """``n`` held-out (shape, texture, palette) rows, spread evenly over the held-out set and
    with all-different (shape, texture) pairs where possible."""
    combos = np.array([(s, t, p) for s in range(N_SHAPES) for t in range(N_TEXTURES)
                       for p in range(N_PALETTES) if held_out(s, t, p)])
    pick = np.linspace(0, len(combos) - 1, n).round().astype(int)
    return combos[pick]


def nearest_upstream_class(s: int, t: int, p: int) -> int:
    """The upstream class sharing shape and texture with a held-out combination (next palette):
    the label a web image of an unseen class would most plausibly carry upstream."""
    tax = upstream_taxonomy()
    for dp in range(1, N_PALETTES):
        q = (p + dp) % N_PALETTES
        hit = np.nonzero((tax.shape == s) & (tax.texture == t) & (tax.palette == q))[0]
        if hit.size:
            return int(hit[0])
    raise ValueError(f"no upstream class shares shape {s} and texture {t}")
