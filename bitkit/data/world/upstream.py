"""The embedded upstream set: a stand-in for ImageNet-21k / JFT-300M (paper section 3.1).

728 classes in a 4-level hierarchy (``taxonomy``), any size from 1 to 2^40 examples without
disk, optional multi-label images (1-3 labelled objects, like ImageNet-21k's multiple labels
and JFT's 1.26 labels per image) and an optional label-noise rate (JFT: ~20% noisy labels).
Objects usually sit on their class's habitat background (``context``), so a model can learn
to lean on context: the out-of-context test (supplementary F) measures exactly that.

Near-duplicates of the ``world-objects`` test images are planted in the train split (see
``duplicates``), as JFT contained near-copies of downstream test images (supplementary B).
"""

from __future__ import annotations

import numpy as np

from bitkit.data.cards import DataCard
from bitkit.data.world import duplicates, render, rng
from bitkit.data.world.common import WorldDataset, finish, object_slot, palette_colours
from bitkit.data.world.taxonomy import PALETTES, habitat, upstream_taxonomy

_PAL = np.array(PALETTES)


class UpstreamWorld(WorldDataset):
    """Upstream pre-training data.

    Args:
        label_noise: fraction of examples whose (every) label is replaced by a random other
            class; ``clean_labels`` gives the truth, for teaching what noise costs.
        context: probability that an object sits on its class's habitat background.
    """

    def __init__(self, card: DataCard, split: str = "train", *, size: int | None = None,
                 seed: int = 0, image_size: int | None = None, label_noise: float = 0.0,
                 context: float = 0.8):
        super().__init__(card, split, size=size, seed=seed, image_size=image_size)
        if not 0.0 <= label_noise < 1.0:
            raise ValueError(f"label_noise must be in [0, 1); got {label_noise}")
        if not 0.0 <= context <= 1.0:
            raise ValueError(f"context must be in [0, 1]; got {context}")
        self.label_noise, self.context = float(label_noise), float(context)
        self.taxonomy = upstream_taxonomy()
        self.planted = (duplicates.upstream_plants(self.size, seed)
                        if card.splits[split] == "train" else {})

    def _class_names(self) -> list[str]:
        return list(upstream_taxonomy().names)

    def _objects_per_image(self, keys: np.ndarray) -> np.ndarray:
        if not self.multi_label:
            return np.ones(keys.shape[0], np.int64)
        return 1 + rng.integers(keys, 1, 3, salt=2)[:, 0]

    def _clean(self, keys: np.ndarray) -> np.ndarray:
        """(B, 3) class of each object slot (slots beyond the object count are unused)."""
        return rng.integers(keys, 3, self.num_classes, salt=1)

    def clean_labels(self, indices: np.ndarray) -> np.ndarray:
        """Labels before label noise (planted duplicates included)."""
        idx = self._indices(indices)
        saved, self.label_noise = self.label_noise, 0.0
        try:
            return self.labels(idx)
        finally:
            self.label_noise = saved

    def _labels(self, keys: np.ndarray, indices: np.ndarray) -> np.ndarray:
        cls = self._clean(keys)
        n_obj = self._objects_per_image(keys)
        for j, (_pair, label) in self._plants_in(indices):
            cls[j, 0], n_obj[j] = label, 1
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

    def _draw(self, keys: np.ndarray, indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
        tax, s = self.taxonomy, self.image_size
        cls = self._clean(keys)  # draw the true objects even when the label is noisy
        n_obj = self._objects_per_image(keys)
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
            render.composite(canvas, object_slot(
                uo, shape=tax.shape[c], texture=tax.texture[c],
                palette_rgb=palette_colours(pal[:, 0], pal[:, 1], uo[:, 33:39]),
                cx=cx, cy=cy, radius=radius, present=present))
        images = finish(canvas, keys)
        for j, (pair, _label) in self._plants_in(indices):
            images[j] = duplicates.pair_scene(self.seed, pair, s)
        return images
