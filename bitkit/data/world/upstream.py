"""The embedded upstream set: a stand-in for ImageNet-21k / JFT-300M (paper section 3.1).

728 classes in a 4-level hierarchy (``taxonomy``), any size from 1 to 2^40 examples without
disk, optional multi-label images (1-3 labelled objects, 1.26 labels per image on average as in
JFT: paper section 3.1) and an optional label-noise rate (JFT: ~20% noisy labels).
Objects usually sit on their class's habitat background (``context``), so a model can learn
to lean on context: the out-of-context test (supplementary F) measures exactly that.

Near-duplicates of test images of four downstream tasks (``duplicates.HOSTS``) are planted in
the train split (see ``duplicates``), as JFT contained near-copies of downstream test images
(supplementary B).

Scene kinds (world version 2). Real upstream photos are not all one centred object: some are
close-ups where the object's surface fills the frame, some show a group of the same thing.
Transfer can only help a downstream task whose primitives the upstream labels make a model
learn, so a single-object image is one of three kinds (each still labelled with its class):

- ``single`` (default 60%): one object of radius 0.42-0.65, as before;
- ``closeup`` (``closeup``, 20%): the object zoomed in (radius 1.3-2.5) so its texture fills
  most of the frame, at texture frequencies spanning 5-22 cycles/unit -- both the fine and the
  coarse scales of ``world-texture``. Without these, upstream textures only ever appeared inside
  small objects and did not transfer to the full-frame texture task (measured in
  ``bench/world_transfer.py``);
- ``flock`` (``flock``, 20%): 2-5 small copies of the object (radius 0.17-0.26) in distinct
  cells of a 3x3 grid, the same layout and object size as ``world-count``: recognising small
  objects anywhere in the frame is what counting is built on.

Multi-label images (2-3 different objects) are unchanged.
"""

from __future__ import annotations

import numpy as np

from bitkit.data.cards import DataCard
from bitkit.data.world import duplicates, render, rng
from bitkit.data.world.common import WorldDataset, finish, object_slot, palette_colours
from bitkit.data.world.registry import register
from bitkit.data.world.taxonomy import PALETTES, habitat, upstream_taxonomy

_PAL = np.array(PALETTES)
CLOSEUP, FLOCK = 0.2, 0.2  # default fractions of single-object images (see module docstring)
MAX_FLOCK = 5
#: Multi-label images: P(1), P(2), P(3) labelled objects. Mean 1.26 labels per image, JFT's.
OBJECTS = (0.80, 0.14, 0.06)


class UpstreamWorld(WorldDataset):
    """Upstream pre-training data.

    Args:
        label_noise: fraction of examples whose (every) label is replaced by a random other
            class; ``clean_labels`` gives the truth, for teaching what noise costs.
        context: probability that an object sits on its class's habitat background.
        closeup, flock: fractions of single-object images drawn as a close-up or as a group
            of 2-5 small copies (see the module docstring for why).
        objects: multi-label only: the probabilities of 1, 2 and 3 labelled objects per image
            (default :data:`OBJECTS`, JFT's 1.26 labels per image).
    """

    def __init__(self, card: DataCard, split: str = "train", *, size: int | None = None,
                 seed: int = 0, image_size: int | None = None, label_noise: float = 0.0,
                 context: float = 0.8, closeup: float = CLOSEUP, flock: float = FLOCK,
                 objects: tuple[float, float, float] = OBJECTS):
        super().__init__(card, split, size=size, seed=seed, image_size=image_size)
        if not (0.0 <= closeup and 0.0 <= flock and closeup + flock <= 1.0):
            raise ValueError(f"closeup and flock must be >= 0 with closeup + flock <= 1; got "
                             f"{closeup} and {flock}")
        self.closeup, self.flock = float(closeup), float(flock)
        if not 0.0 <= label_noise < 1.0:
            raise ValueError(f"label_noise must be in [0, 1); got {label_noise}")
        if not 0.0 <= context <= 1.0:
            raise ValueError(f"context must be in [0, 1]; got {context}")
        self.label_noise, self.context = float(label_noise), float(context)
        p = np.asarray(objects, dtype=np.float64)
        if p.shape != (3,) or (p < 0).any() or abs(p.sum() - 1.0) > 1e-6:
            raise ValueError(f"objects must be three probabilities (1, 2, 3 objects per image) "
                             f"adding up to 1; got {objects}")
        self.objects = tuple(float(x) for x in p)
        self.taxonomy = upstream_taxonomy()
        self.planted = (duplicates.upstream_plants(self.size, seed)
                        if card.splits[split] == "train" else {})

    def _class_names(self) -> list[str]:
        return list(upstream_taxonomy().names)

    def _objects_per_image(self, keys: np.ndarray) -> np.ndarray:
        if not self.multi_label:
            return np.ones(keys.shape[0], np.int64)
        u = rng.uniform(keys, 1, salt=2)[:, 0]
        p1, p2, _ = self.objects
        return 1 + (u >= p1).astype(np.int64) + (u >= p1 + p2)

    def _clean(self, keys: np.ndarray) -> np.ndarray:
        """(B, 3) class of each object slot (slots beyond the object count are unused)."""
        return rng.integers(keys, 3, self.num_classes, salt=1)

    def clean_labels(self, indices: np.ndarray) -> np.ndarray:
        """Labels before label noise (planted duplicates included)."""
        idx = self.check_indices(indices)
        saved, self.label_noise = self.label_noise, 0.0
        try:
            return self.labels(idx)
        finally:
            self.label_noise = saved

    def _labels(self, keys: np.ndarray, indices: np.ndarray) -> np.ndarray:
        cls = self._clean(keys)
        n_obj = self._objects_per_image(keys)
        for j, plant in self._plants_in(indices):
            if plant.label is not None:
                cls[j, 0], n_obj[j] = plant.label, 1
        if self.label_noise > 0:
            u = rng.uniform(keys, 2, salt=3)
            shift = 1 + (u[:, 1] * (self.num_classes - 1)).astype(np.int64)
            noisy = u[:, 0] < self.label_noise
            cls = np.where(noisy[:, None], (cls + shift[:, None]) % self.num_classes, cls)
        if not self.multi_label:
            return cls[:, 0]
        hot = np.zeros((keys.shape[0], self.num_classes), bool)
        for slot in range(3):
            rows = np.nonzero(n_obj > slot)[0]
            hot[rows, cls[rows, slot]] = True
        return hot

    def _plants_in(self, indices: np.ndarray):
        if not self.planted:
            return []
        return [(j, self.planted[int(i)]) for j, i in enumerate(indices) if int(i) in self.planted]

    def scene_kinds(self, indices) -> np.ndarray:
        """0 single, 1 close-up, 2 flock, 3 multi-object, per example (planted duplicates
        are drawn from ``duplicates`` whatever their kind says)."""
        idx = self.check_indices(indices)
        return self._kinds(rng.keys(self.seed, self.stream, idx))

    def _kinds(self, keys: np.ndarray) -> np.ndarray:
        u = rng.uniform(keys, 1, salt=30)[:, 0]
        kind = np.where(u < self.closeup, 1, np.where(u < self.closeup + self.flock, 2, 0))
        return np.where(self._objects_per_image(keys) > 1, 3, kind)

    def _draw(self, keys: np.ndarray, indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
        tax, s = self.taxonomy, self.image_size
        cls = self._clean(keys)  # draw the true objects even when the label is noisy
        n_obj = self._objects_per_image(keys)
        kind = self._kinds(keys)
        u = rng.uniform(keys, 8, salt=4)
        main_bg = habitat(tax.shape[cls[:, 0]], tax.texture[cls[:, 0]])
        bg = np.where(u[:, 0] < self.context, main_bg, (u[:, 1] * 8).astype(np.int64))
        canvas = render.backgrounds(bg, rng.uniform(keys, 4, salt=5), s)
        multi = n_obj > 1
        cells = np.argsort(rng.uniform(keys, 4, salt=6), axis=1)  # distinct quadrants
        for slot in range(3):
            present = n_obj > slot
            if not present.any():
                break
            c = cls[:, slot]
            uo = rng.uniform(keys, 40, salt=10 + slot)
            radius = np.where(multi, 0.28 + 0.12 * uo[:, 30], 0.42 + 0.23 * uo[:, 30])
            qx = np.where(cells[:, slot] % 2 == 0, -0.45, 0.45)
            qy = np.where(cells[:, slot] // 2 == 0, -0.45, 0.45)
            jitter_x, jitter_y = uo[:, 31] - 0.5, uo[:, 32] - 0.5
            cx = np.where(multi, qx + 0.15 * jitter_x, (0.95 - radius) * jitter_x)
            cy = np.where(multi, qy + 0.15 * jitter_y, (0.95 - radius) * jitter_y)
            pal = _PAL[tax.palette[c]]
            obj = object_slot(
                uo, shape=tax.shape[c], texture=tax.texture[c],
                palette_rgb=palette_colours(pal[:, 0], pal[:, 1], uo[:, 33:39]),
                cx=cx, cy=cy, radius=radius, present=present & (kind != 2))  # flocks: below
            if slot == 0:
                self._closeup(obj, kind == 1, uo)
            render.composite(canvas, obj)
        self._flock(canvas, keys, cls[:, 0], kind == 2)
        images = finish(canvas, keys)
        for j, plant in self._plants_in(indices):
            images[j] = duplicates.pair_scene(self.seed, plant.pair, s, plant.host)
        return images

    @staticmethod
    def _closeup(obj, rows: np.ndarray, uo: np.ndarray) -> None:
        """Turn slot 0 into a close-up on ``rows``: zoomed in, texture at 5-22 cycles/unit."""
        radius = 1.3 + 1.2 * uo[:, 30]
        f_img = np.exp(np.log(5.0) + np.log(22.0 / 5.0) * uo[:, 39])  # log-uniform, image units
        obj.radius = np.where(rows, radius, obj.radius)
        obj.cx = np.where(rows, 0.6 * (uo[:, 31] - 0.5), obj.cx)
        obj.cy = np.where(rows, 0.6 * (uo[:, 32] - 0.5), obj.cy)
        obj.freq = np.where(rows, radius * f_img, obj.freq)

    def _flock(self, canvas: np.ndarray, keys: np.ndarray, c: np.ndarray,
               rows: np.ndarray) -> None:
        """2-5 small copies of class ``c`` in distinct cells of a 3x3 grid, on ``rows`` only
        (drawn on the sub-batch, so a flock costs nothing for the other images)."""
        sel = np.nonzero(rows)[0]
        if sel.size == 0:
            return
        tax, k = self.taxonomy, keys[sel]
        count = 2 + rng.integers(k, 1, MAX_FLOCK - 1, salt=31)[:, 0]
        cells = np.argsort(rng.uniform(k, 9, salt=32), axis=1)
        pal = _PAL[tax.palette[c[sel]]]
        colours = palette_colours(pal[:, 0], pal[:, 1], rng.uniform(k, 6, salt=33))
        for copy in range(MAX_FLOCK):
            live = np.nonzero(count > copy)[0]  # only the flocks that have this copy
            rows, kk, cl = sel[live], k[live], c[sel][live]
            uo = rng.uniform(kk, 40, salt=40 + copy)
            cell = cells[live, copy]
            sub = canvas[rows]
            render.composite(sub, object_slot(
                uo, shape=tax.shape[cl], texture=tax.texture[cl],
                palette_rgb=(colours[0][live], colours[1][live]),
                cx=(cell % 3 - 1) * 0.62 + 0.12 * (uo[:, 31] - 0.5),
                cy=(cell // 3 - 1) * 0.62 + 0.12 * (uo[:, 32] - 0.5),
                radius=0.17 + 0.09 * uo[:, 30]))
            canvas[rows] = sub


register(upstream=UpstreamWorld)
