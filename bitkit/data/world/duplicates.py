"""Planted near-duplicates between upstream train and a downstream test set, with ground truth.

Supplementary B of the paper asks whether near-duplicates of downstream *test* images inside
the upstream *training* data inflate transfer results (Table 1 there: Full vs Dedup). Here the
answer can be measured exactly, because the pairs are planted and known:

- pair ``p`` is a natural-like scene drawn from key ``(seed, "world-dup", p)`` with a
  ``world-objects`` class;
- the ``world-objects`` *test* split shows it, perturbed, at index ``test_position(p)``
  (one of: a small shift, pixel noise, a colour change, a JPEG re-encode, by ``p % 4``);
- the upstream *train* split shows it unperturbed at index ``upstream_position(p, n)``, labelled
  with the nearest upstream class (same shape and texture), as a web copy would be.

A downstream test set always holds its ``PLANTED`` perturbed scenes; an upstream set of size
``n`` contains the first ``min(PLANTED, n // 10)`` of them, so :func:`pairs` depends on ``n``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from bitkit.data.world import rng
from bitkit.data.world.render import noise_bank
from bitkit.data.world.scenes import natural_scene
from bitkit.data.world.taxonomy import held_out_combos, nearest_upstream_class

PLANTED = 40            # perturbed copies in the world-objects test split
TEST_SIZE = 1000        # the world-objects test split size the positions are laid out for
NATURAL_CLASSES = 20    # classes of world-objects
HOST, UPSTREAM = "world-objects", "world-upstream"
PERTURBATIONS = ("shift", "noise", "colour", "jpeg")


@dataclass(frozen=True)
class DuplicatePair:
    """Ground truth for one planted pair; ids are ``example_id`` strings of the datasets."""

    upstream_id: str
    downstream_id: str
    perturbation: str
    downstream_label: int
    upstream_label: int


def test_position(p: int) -> int:
    stride = TEST_SIZE // PLANTED
    return p * stride + stride // 2


def upstream_count(upstream_size: int) -> int:
    return min(PLANTED, upstream_size // 10)


def upstream_position(p: int, upstream_size: int) -> int:
    stride = upstream_size // upstream_count(upstream_size)
    return p * stride + stride // 3


def pair_class(seed: int, p: int) -> int:
    """The world-objects class of pair ``p``."""
    return int(rng.integers(rng.keys(seed, "world-dup", np.array([p])), 1, NATURAL_CLASSES)[0, 0])


def upstream_plants(upstream_size: int, seed: int) -> dict[int, tuple[int, int]]:
    """Upstream index -> (pair, upstream label) for an upstream train split of this size."""
    combos = held_out_combos(NATURAL_CLASSES)
    return {upstream_position(p, upstream_size):
            (p, nearest_upstream_class(*combos[pair_class(seed, p)]))
            for p in range(upstream_count(upstream_size))}


def test_plants(test_size: int) -> dict[int, int]:
    """world-objects test index -> pair, for a test split of ``test_size`` examples."""
    return {test_position(p): p for p in range(PLANTED) if test_position(p) < test_size}


@lru_cache(maxsize=512)
def _scene(seed: int, p: int, size: int) -> bytes:
    combos = held_out_combos(NATURAL_CLASSES)[[pair_class(seed, p)]]
    return natural_scene(rng.keys(seed, "world-dup", np.array([p])), combos, size)[0].tobytes()


def pair_scene(seed: int, p: int, size: int) -> np.ndarray:
    """The unperturbed image of pair ``p``: uint8 (3, S, S), as it appears upstream."""
    return np.frombuffer(_scene(seed, p, size), np.uint8).reshape(3, size, size).copy()


def perturbed_scene(seed: int, p: int, size: int) -> np.ndarray:
    """The perturbed image of pair ``p`` as it appears in the downstream test split."""
    img = pair_scene(seed, p, size).astype(np.float32)
    u = rng.uniform(rng.keys(seed, "world-dup-perturb", np.array([p])), 4)[0]
    kind = PERTURBATIONS[p % 4]
    if kind == "shift":
        dy, dx = 1 + int(u[0] * 3), 1 + int(u[1] * 3)
        img = np.pad(img, ((0, 0), (dy, 0), (dx, 0)), mode="edge")[:, :size, :size]
    elif kind == "noise":
        img += noise_bank(size)[int(u[0] * 16)] * 20.0
    elif kind == "colour":
        img *= (0.8 + 0.4 * u[:3])[:, None, None]
    else:  # jpeg
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8).transpose(1, 2, 0)).save(buf, "JPEG",
                                                                      quality=30 + int(u[0] * 40))
        img = np.asarray(Image.open(buf).convert("RGB"), np.float32).transpose(2, 0, 1)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def pairs(upstream_size: int, *, seed: int = 0, test_size: int = TEST_SIZE,
          upstream: str = UPSTREAM) -> list[DuplicatePair]:
    """All planted pairs between ``<upstream>:train`` of ``upstream_size`` examples and
    ``world-objects:test`` of ``test_size`` examples (same ``seed`` on both sides).
    ``upstream`` is the upstream card (``world-upstream-multilabel`` holds the same plants,
    each with its one label)."""
    test = {p: i for i, p in test_plants(test_size).items()}
    out = []
    for j, (p, up_label) in sorted(upstream_plants(upstream_size, seed).items()):
        if p in test:
            out.append(DuplicatePair(f"{upstream}:train:{j}", f"{HOST}:test:{test[p]}",
                                     PERTURBATIONS[p % 4], pair_class(seed, p), up_label))
    return out


def duplicate_of(example_id: str, upstream_size: int, *, seed: int = 0,
                 test_size: int = TEST_SIZE, upstream: str = UPSTREAM) -> str | None:
    """The planted partner of an example id (either side), or ``None``."""
    for pair in pairs(upstream_size, seed=seed, test_size=test_size, upstream=upstream):
        if example_id == pair.upstream_id:
            return pair.downstream_id
        if example_id == pair.downstream_id:
            return pair.upstream_id
    return None
