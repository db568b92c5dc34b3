"""The base of every embedded-world dataset: deterministic from (seed, split, index).

Each example's randomness comes from one key, ``rng.keys(seed, "<card>/<split>", index)``, so
the same (seed, index) gives the same bytes in any batch, worker or process, and a world of
10M images costs no disk. Rendering happens a batch at a time (``__getitems__``, which
``DataLoader`` calls with a whole batch of indices), which is what makes it fast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bitkit.data.base import ImageDataset
from bitkit.data.cards import DataCard
from bitkit.data.world import render, rng

MAX_SIZE = 1 << 40


class WorldDataset(ImageDataset):
    """A procedurally generated split. Subclasses implement ``_labels`` and ``_draw``."""

    def __init__(self, card: DataCard, split: str = "train", *, size: int | None = None,
                 seed: int = 0, image_size: int | None = None):
        if split not in card.splits:
            raise ValueError(f"{card.name} has no split {split!r}; it has {list(card.splits)}")
        self.card, self.split, self.seed = card, split, int(seed)
        self.size = int(size if size is not None else card.split_sizes[split])
        if not 1 <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be between 1 and {MAX_SIZE:,}; got {size}")
        self.image_size = int(image_size or card.image_size[0])
        if not 16 <= self.image_size <= 256:
            raise ValueError(f"image_size must be between 16 and 256 pixels; got {image_size}")
        self.stream = f"{card.name}/{card.splits[split]}"
        self.multi_label = card.multi_label
        self.num_classes = card.num_classes
        self.class_names = list(card.class_names or self._class_names())

    # ------------------------------------------------------------------ subclass interface
    def _class_names(self) -> list[str]:
        raise NotImplementedError  # pragma: no cover - abstract

    def _labels(self, keys: np.ndarray, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - abstract

    def _draw(self, keys: np.ndarray, indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """uint8 images (B, 3, S, S) for these examples (``labels`` from ``_labels``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _planted_labels(self, indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Labels after planted examples replaced theirs (tasks that host plants override)."""
        return labels

    def _planted_images(self, indices: np.ndarray, images: np.ndarray) -> np.ndarray:
        """Images after planted examples replaced theirs (tasks that host plants override)."""
        return images

    def _given_labels(self, indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The labels the dataset gives, from the labels its pictures show: the same, unless
        the split plants label errors (``noise``). Pictures are drawn from the true labels."""
        return labels

    # ------------------------------------------------------------------------- public API
    def __len__(self) -> int:
        return self.size

    def check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``indices`` as int64 positions, negative ones counted from the end; an
        ``IndexError`` naming the split for one out of range."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + self.size, idx)
        bad = (idx < 0) | (idx >= self.size)
        if bad.any():
            raise IndexError(f"index {np.asarray(indices).reshape(-1)[bad][0]} out of range for "
                             f"{self.card.name}:{self.split} with {self.size} examples")
        return idx

    def labels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = self.check_indices(indices)
        out = []
        for lo in range(0, idx.size, 1 << 16):  # bounded memory on 10M-example splits
            chunk = idx[lo:lo + (1 << 16)]
            out.append(self._given_labels(chunk, self._planted_labels(
                chunk, self._labels(rng.keys(self.seed, self.stream, chunk), chunk))))
        if not out:
            return np.zeros((0, self.num_classes) if self.multi_label else (0,), np.int64)
        return np.concatenate(out)

    def draw(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (B, 3, S, S) and labels drawn from explicit example keys instead of
        this split's own, with nothing planted: ordinary examples of this task from a stream of
        the caller's (``duplicates`` draws a host's pair pictures so). Every example is drawn
        at index -1, never a planted position."""
        idx = np.full(len(keys), -1, np.int64)
        labels = self._labels(keys, idx)
        return self._draw(keys, idx, labels), labels

    def render(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Images ``(B, 3, S, S)`` uint8 and labels for a batch of indices."""
        idx = self.check_indices(indices)
        keys = rng.keys(self.seed, self.stream, idx)
        labels = self._planted_labels(idx, self._labels(keys, idx))
        images = self._planted_images(idx, self._draw(keys, idx, labels))
        return torch.from_numpy(images), self._given_labels(idx, labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        images, labels = self.render([index])
        return images[0], self._target(labels[0])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, object]]:
        """Batched fetch: ``DataLoader`` calls this with a batch of indices when it exists."""
        images, labels = self.render(indices)
        return [(img, self._target(lab)) for img, lab in zip(images, labels, strict=True)]


def object_slot(
    u: np.ndarray, *, shape: np.ndarray, texture: np.ndarray, palette_rgb: tuple[np.ndarray,
                                                                                np.ndarray],
    cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, angle: np.ndarray | None = None,
    present: np.ndarray | None = None,
) -> render.Objects:
    """One object slot with nuisance parameters (texture frequency/angle, noise grid) drawn
    from ``u`` (B, >= 29) uniforms; the caller fixes what carries the label."""
    bsz = shape.shape[0]
    return render.Objects(
        shape=shape, texture=texture, colour_a=palette_rgb[0], colour_b=palette_rgb[1],
        cx=cx, cy=cy, radius=radius,
        angle=(u[:, 0] * 2 * np.pi) if angle is None else angle,
        freq=5.0 + 5.0 * u[:, 1], tex_angle=u[:, 2] * np.pi,
        noise_grid=u[:, 4:29].reshape(bsz, 5, 5).astype(np.float32),
        present=np.ones(bsz, bool) if present is None else present,
    )


def palette_colours(colour_a: np.ndarray, colour_b: np.ndarray,
                    u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Jittered RGB for colour indices; ``u`` (B, 6) uniforms."""
    return render.colours(colour_a, u[:, 0:3]), render.colours(colour_b, u[:, 3:6])


def finish(canvas: np.ndarray, keys: np.ndarray, amp: tuple[float, float] = (0.02, 0.07)
           ) -> np.ndarray:
    """Sensor noise + uint8 quantisation, from the example keys."""
    u = rng.uniform(keys, 2, salt=999)
    tile = (u[:, 0] * 16).astype(np.int64)
    return render.finish(canvas, tile, amp[0] + (amp[1] - amp[0]) * u[:, 1])
