"""Downstream tasks of the embedded world, shaped like VTAB's three groups (paper section 3.2).

natural-like   ``world-objects``   20 object classes unseen upstream (held-out combinations)
               ``world-fine``      16 fine-grained classes (look-alike shape, fill, shade)
specialised    ``world-texture``   13 texture classes filling the frame (a DTD stand-in)
structured     ``world-count``     how many objects (1-6)                 crop destroys it
               ``world-orientation`` which way an arrow points (8 bins)  flip destroys it
               ``world-location``  horizontal position (8 bins)          flip and crop destroy it
               ``world-distance``  distance of the nearest object (4 bins) crop destroys it

The structured labels are geometric, so a random flip or crop can change them: their cards set
``flip``/``crop`` to false, as supplementary E does for dSprites, SmallNORB, Clevr, KITTI, DMLab.
Every task draws with the same shapes, textures and colours as upstream: what transfers is the
ability to see those primitives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitkit.data.cards import DataCard
from bitkit.data.world import duplicates, noise, render, rng
from bitkit.data.world.common import WorldDataset, finish, object_slot, palette_colours
from bitkit.data.world.registry import register
from bitkit.data.world.scenes import natural_scene
from bitkit.data.world.taxonomy import (
    N_PALETTES,
    N_SHAPES,
    N_TEXTURES,
    PALETTES,
    combo_name,
    held_out_combos,
)

_PAL = np.array(PALETTES)
_N_BG = len(render.BACKGROUND_NAMES)


def _random_background(keys: np.ndarray, size: int) -> np.ndarray:
    kind = rng.integers(keys, 1, _N_BG, salt=7)[:, 0]
    return render.backgrounds(kind, rng.uniform(keys, 4, salt=5), size)


def _random_object(keys: np.ndarray, salt: int, **geometry: np.ndarray) -> render.Objects:
    """An object of any shape/texture/palette (a nuisance: the label is in the geometry)."""
    u = rng.uniform(keys, 40, salt=salt)
    shape = geometry.pop("shape", (u[:, 36] * N_SHAPES).astype(np.int64))
    texture = (u[:, 37] * N_TEXTURES).astype(np.int64)
    pal = _PAL[(u[:, 38] * N_PALETTES).astype(np.int64)]
    return object_slot(u, shape=shape, texture=texture,
                       palette_rgb=palette_colours(pal[:, 0], pal[:, 1], u[:, 30:36]), **geometry)


def _in_bin(label: np.ndarray, u: np.ndarray, bins: int) -> np.ndarray:
    """A value in [0, 1) inside bin ``label``, away from its edges (labels stay unambiguous)."""
    return (label + 0.1 + 0.8 * u) / bins


class Task(WorldDataset):
    """A downstream task. The test split of a ``duplicates.HOSTS`` task holds planted,
    perturbed near-duplicates of upstream train images, with their own labels.

    Args:
        test_label_noise: fraction of the *test* split's labels replaced by another class
            (``noise``; the pictures still show the true class, the train split stays exact).
            ``label_errors()`` and ``clean_labels()`` give the truth.
    """

    def __init__(self, card: DataCard, split: str = "train", *, test_label_noise: float = 0.0,
                 **kw):
        super().__init__(card, split, **kw)
        hosts = card.name in duplicates.HOSTS and card.splits[split] == "test"
        self.planted = duplicates.test_plants(self.size) if hosts else {}
        self.test_label_noise = noise.check_rate(test_label_noise)
        #: the rate of planted label errors in this split (0 for the train split)
        self.label_noise = self.test_label_noise if card.splits[split] == "test" else 0.0

    def _given_labels(self, indices, labels):
        return noise.relabel(self.seed, self.stream, indices, labels, self.label_noise,
                             self.num_classes)

    def clean_labels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The classes the pictures show (the labels before planted label errors)."""
        idx = self.check_indices(indices)
        return self._planted_labels(idx, self._labels(rng.keys(self.seed, self.stream, idx), idx))

    def label_errors(self, indices: Sequence[int] | np.ndarray | None = None
                     ) -> list[noise.LabelError]:
        """The planted label errors among ``indices`` (default: the whole split), by index."""
        idx = np.unique(self.check_indices(np.arange(self.size) if indices is None
                                           else indices))
        if self.label_noise <= 0 or idx.size == 0:
            return []
        true = self.clean_labels(idx)
        given = self._given_labels(idx, true)
        return [noise.LabelError(self.example_id(int(i)), int(i), int(t), int(g))
                for i, t, g in zip(idx, true, given, strict=True) if t != g]

    def _plants_in(self, indices: np.ndarray) -> list[tuple[int, int]]:
        """(batch position, pair) of the planted examples among ``indices``."""
        if not self.planted:
            return []
        return [(j, self.planted[int(i)]) for j, i in enumerate(indices) if int(i) in self.planted]

    def _planted_labels(self, indices, labels):
        for j, p in self._plants_in(indices):
            labels[j] = duplicates.pair_class(self.seed, p, self.card.name)
        return labels

    def _planted_images(self, indices, images):
        for j, p in self._plants_in(indices):
            images[j] = duplicates.perturbed_scene(self.seed, p, self.image_size, self.card.name)
        return images


class ObjectsTask(Task):
    """Natural-like: 20 classes unseen upstream; the test split hosts planted near-duplicates."""

    combos = held_out_combos(duplicates.NATURAL_CLASSES)

    def _class_names(self) -> list[str]:
        return [combo_name(*c) for c in self.combos]

    def _labels(self, keys, indices):
        return rng.integers(keys, 1, self.num_classes, salt=1)[:, 0]

    def _draw(self, keys, indices, labels):
        return natural_scene(keys, self.combos[labels], self.image_size)


class FineTask(Task):
    """Fine-grained: four look-alike shapes (pentagon, hexagon, star, flower) x fill (solid or
    striped) x a subtle shade (orange or red on blue), like Pets / Flowers breeds that differ in
    details. All four shapes are upstream shapes: ImageNet-21k holds many breeds, and a
    fine-grained task transfers when upstream labels already make a model tell such details
    apart. (World version 2 drew stars with 4-7 points, a detail no upstream label ever asked
    for: more upstream data made transfer worse there, see ``bench/world_transfer.py``.)"""

    _shapes = ("pentagon", "hexagon", "star", "flower")
    _fills, _shades = ("solid", "striped"), ("orange", "red")

    def _class_names(self) -> list[str]:
        return [f"{f} {s} {shape}" for shape in self._shapes for f in self._fills
                for s in self._shades]

    def _labels(self, keys, indices):
        return rng.integers(keys, 1, self.num_classes, salt=1)[:, 0]

    def _draw(self, keys, indices, labels):
        canvas = _random_background(keys, self.image_size)
        u = rng.uniform(keys, 40, salt=10)
        colour_a = np.where(labels % 2 == 0, render.COLOUR_NAMES.index("orange"),
                            render.COLOUR_NAMES.index("red"))
        colour_b = np.full_like(colour_a, render.COLOUR_NAMES.index("blue"))
        shapes = np.array([render.SHAPES.index(n) for n in self._shapes])
        radius = 0.45 + 0.2 * u[:, 30]
        render.composite(canvas, object_slot(
            u, shape=shapes[labels // 4],
            texture=np.where((labels // 2) % 2 == 0, 0, render.TEXTURES.index("striped")),
            palette_rgb=palette_colours(colour_a, colour_b, u[:, 33:39]),
            cx=(0.95 - radius) * (u[:, 31] - 0.5), cy=(0.95 - radius) * (u[:, 32] - 0.5),
            radius=radius))
        return finish(canvas, keys)


class TextureTask(Task):
    """Specialised: a texture fills the whole frame; colours are random, so only the pattern
    (and its scale) identifies the class, as in DTD."""

    _scaled = ("striped", "checkered", "dotted", "ringed", "zigzag")
    _plain = ("solid", "graded", "mottled")

    def _class_names(self) -> list[str]:
        return [f"{sc} {t}" for t in self._scaled for sc in ("fine", "coarse")] + list(self._plain)

    def _labels(self, keys, indices):
        return rng.integers(keys, 1, self.num_classes, salt=1)[:, 0]

    def _draw(self, keys, indices, labels):
        u = rng.uniform(keys, 40, salt=10)
        n_scaled = 2 * len(self._scaled)
        names = [self._scaled[c // 2] if c < n_scaled else self._plain[c - n_scaled]
                 for c in range(self.num_classes)]
        texture = np.array([render.TEXTURES.index(n) for n in names])[labels]
        fine = (labels < n_scaled) & (labels % 2 == 0)
        radius = np.full(labels.shape, 2.5)
        obj = object_slot(u, shape=np.full_like(labels, render.SHAPES.index("square")),
                          texture=texture, cx=np.zeros(labels.shape), cy=np.zeros(labels.shape),
                          radius=radius, palette_rgb=self._colours(keys))
        obj.freq = radius * np.where(fine, 16 + 4 * u[:, 1], 5 + 2 * u[:, 1])
        canvas = np.zeros((labels.size, 3, self.image_size, self.image_size), np.float32)
        render.composite(canvas, obj)
        return finish(canvas, keys)

    @staticmethod
    def _colours(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = rng.integers(keys, 2, len(render.COLOUR_NAMES) - 1, salt=8)
        second = (c[:, 0] + 1 + c[:, 1]) % len(render.COLOUR_NAMES)  # always a different colour
        return palette_colours(c[:, 0], second, rng.uniform(keys, 6, salt=9))


class CountTask(Task):
    """Structured: count 1-6 objects (Clevr-count). A crop could cut objects out: no crop."""

    def _class_names(self) -> list[str]:
        return [str(n) for n in range(1, self.num_classes + 1)]

    def _labels(self, keys, indices):
        return rng.integers(keys, 1, self.num_classes, salt=1)[:, 0]

    def _draw(self, keys, indices, labels):
        canvas = _random_background(keys, self.image_size)
        cells = np.argsort(rng.uniform(keys, 9, salt=6), axis=1)  # distinct cells of a 3x3 grid
        jitter = rng.uniform(keys, 2 * self.num_classes, salt=11) - 0.5
        size_u = rng.uniform(keys, self.num_classes, salt=12)
        for slot in range(self.num_classes):
            cell = cells[:, slot]
            render.composite(canvas, _random_object(
                keys, 20 + slot, cx=(cell % 3 - 1) * 0.62 + 0.12 * jitter[:, 2 * slot],
                cy=(cell // 3 - 1) * 0.62 + 0.12 * jitter[:, 2 * slot + 1],
                radius=0.17 + 0.07 * size_u[:, slot], present=labels >= slot))
        return finish(canvas, keys)


class OrientationTask(Task):
    """Structured: direction an arrow points, in 8 bins of 45 degrees (dSprites-orientation).
    A horizontal flip mirrors the direction: no flip."""

    def _class_names(self) -> list[str]:
        step = 360 // self.num_classes
        return [f"{a}-{a + step} deg" for a in range(0, 360, step)]

    def _labels(self, keys, indices):
        return rng.integers(keys, 1, self.num_classes, salt=1)[:, 0]

    def _draw(self, keys, indices, labels):
        canvas = _random_background(keys, self.image_size)
        u = rng.uniform(keys, 4, salt=13)
        render.composite(canvas, _random_object(
            keys, 20, shape=np.full_like(labels, render.SHAPES.index("arrow")),
            angle=2 * np.pi * _in_bin(labels, u[:, 0], self.num_classes),
            cx=0.2 * (u[:, 1] - 0.5), cy=0.2 * (u[:, 2] - 0.5), radius=0.55 + 0.2 * u[:, 3]))
        return finish(canvas, keys)


class LocationTask(Task):
    """Structured: horizontal position of one object in 8 bins (dSprites-location). Both a
    flip (mirrors x) and a crop (shifts x) change the label."""

    def _class_names(self) -> list[str]:
        return [f"x-bin {b}" for b in range(self.num_classes)]

    def _labels(self, keys, indices):
        return rng.integers(keys, 1, self.num_classes, salt=1)[:, 0]

    def _draw(self, keys, indices, labels):
        canvas = _random_background(keys, self.image_size)
        u = rng.uniform(keys, 3, salt=13)
        render.composite(canvas, _random_object(
            keys, 20, cx=-1.0 + 2.0 * _in_bin(labels, u[:, 0], self.num_classes),
            cy=1.2 * (u[:, 1] - 0.5), radius=0.2 + 0.08 * u[:, 2]))
        return finish(canvas, keys)


class DistanceTask(Task):
    """Structured: distance of the nearest of 1-3 objects, in 4 bins (Clevr-/KITTI-distance).
    Farther objects are smaller and higher in the frame; a crop-and-resize changes apparent
    size and height, so: no crop."""

    def _class_names(self) -> list[str]:
        return ["very near", "near", "far", "very far"][: self.num_classes]

    def _labels(self, keys, indices):
        return rng.integers(keys, 1, self.num_classes, salt=1)[:, 0]

    def _draw(self, keys, indices, labels):
        canvas = _random_background(keys, self.image_size)
        u = rng.uniform(keys, 8, salt=13)
        n_obj = 1 + (u[:, 0] * 3).astype(np.int64)
        z_near = _in_bin(labels, u[:, 1], self.num_classes)
        # The others are farther than the nearest one; paint far to near (painter's order).
        z = np.stack([z_near + (1 - z_near) * u[:, 2], z_near + (1 - z_near) * u[:, 3], z_near], 1)
        present = np.stack([n_obj >= 3, n_obj >= 2, np.ones_like(n_obj, bool)], 1)
        for slot in range(3):
            zs = z[:, slot]
            render.composite(canvas, _random_object(
                keys, 20 + slot, cx=1.4 * (u[:, 4 + slot] - 0.5), cy=0.55 - 0.9 * zs,
                radius=0.42 * (1.0 - 0.7 * zs), present=present[:, slot]))
        return finish(canvas, keys)


register(objects=ObjectsTask, fine=FineTask, texture=TextureTask, count=CountTask,
         orientation=OrientationTask, location=LocationTask, distance=DistanceTask)
