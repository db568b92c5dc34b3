"""scikit-learn's handwritten digits: a small *real* downstream task that needs no download.

1797 8x8 grey-scale digits (values 0..16) ship inside scikit-learn. We return them as 3x8x8
uint8 tensors (grey replicated to RGB, 0..16 scaled to 0..255) so they flow through the same
BiT preprocessing as everything else. sklearn has no official split: the card fixes one
(first 1297 train, last 500 test), so results are comparable across runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from bitkit.data.base import ImageDataset
from bitkit.data.cards import DataCard


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return np.repeat(images[:, None], 3, axis=1), d.target.astype(np.int64)


class DigitsDataset(ImageDataset):
    def __init__(self, card: DataCard, split: str = "train"):
        if split not in card.splits:
            raise ValueError(f"{card.name} has no split {split!r}; it has {list(card.splits)}")
        images, labels = _digits()
        n_train = card.split_sizes["train"]
        sl = slice(0, n_train) if split == "train" else slice(n_train, None)
        self.card, self.split, self._offset = card, split, sl.start or 0
        self.images, self._labels = torch.from_numpy(images[sl]), labels[sl]
        self.num_classes, self.multi_label = card.num_classes, False
        self.class_names = list(card.class_names or map(str, range(10)))

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = self._check_index(index)
        return self.images[i], int(self._labels[i])

    def labels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._labels[np.asarray(indices, dtype=np.int64)]

    def example_id(self, index: int) -> str:
        """Ids use the index in sklearn's full array, so train and test ids never collide."""
        return f"{self.card.name}:{self._offset + self._check_index(index)}"
