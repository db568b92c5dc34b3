"""The dataset contract every loader in ``bitkit.data`` returns.

A map-style ``torch.utils.data.Dataset`` of raw ``(image, target)`` pairs: the image is a PIL
image or a ``uint8`` tensor (3, H, W) *before* BiT preprocessing, the target an ``int`` or, for
multi-label data (ImageNet-21k, JFT: paper section 3.1), a multi-hot ``float32`` tensor. Labels
are available without decoding any image (``labels()``/``targets``), which is what few-shot
sampling and class statistics need on a million-image dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bitkit.data.cards import DataCard
from bitkit.data.corrupt import CorruptReport


class ImageDataset(Dataset):
    """Base of all raw datasets. Subclasses set the attributes and implement ``__getitem__``,
    ``__len__`` and ``labels``."""

    card: DataCard
    split: str
    num_classes: int
    class_names: list[str]
    multi_label: bool

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def labels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Class ids ``(n,)`` (``(n, C)`` bool for multi-label) without decoding images."""
        raise NotImplementedError  # pragma: no cover - abstract

    def readable(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Bool ``(n,)``: can these examples' images be decoded? Generated and in-memory data
        always can; file-backed datasets decode them (and flag the bad ones, see
        ``bitkit.data.corrupt``). Label-based selection (k-shot) keeps only readable examples,
        so a subset's labels are the labels of the images it really yields."""
        return np.ones(len(indices), dtype=bool)

    @property
    def targets(self) -> np.ndarray:
        """Labels of the whole split (see :meth:`labels`)."""
        return self.labels(np.arange(len(self)))

    def example_id(self, index: int) -> str:
        """A stable id, ``<card>:<split>:<index>`` unless the source has its own ids. Error
        analysis and near-duplicate reports refer to examples by this id."""
        return f"{self.card.name}:{self.split}:{self._check_index(index)}"

    def _check_index(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {self.card.name}:{self.split} "
                             f"with {n} examples")
        return i

    def _target(self, label: Any) -> Any:
        """Raw label -> what ``__getitem__`` returns (int, or multi-hot float tensor)."""
        if self.multi_label:
            return torch.as_tensor(np.asarray(label, dtype=np.float32))
        return int(label)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.card.name!r}, split={self.split!r}, "
                f"n={len(self)}, classes={self.num_classes})")


class SubsetDataset(ImageDataset):
    """A subset of another dataset that keeps its card, class names and example ids (a
    ``torch.utils.data.Subset`` would lose them). Few-shot subsets and clean eval sets use it."""

    def __init__(self, parent: ImageDataset, indices: Sequence[int] | np.ndarray, tag: str = ""):
        self.parent = parent
        self.indices = np.asarray(indices, dtype=np.int64)
        self.card, self.split = parent.card, parent.split
        self.num_classes, self.class_names = parent.num_classes, parent.class_names
        self.multi_label = parent.multi_label
        self.tag = tag

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.parent[int(self.indices[self._check_index(index)])]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, Any]]:
        mapped = [int(self.indices[self._check_index(i)]) for i in indices]
        getitems = getattr(self.parent, "__getitems__", None)
        return getitems(mapped) if getitems else [self.parent[i] for i in mapped]

    def labels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.parent.labels(self.indices[np.asarray(indices, dtype=np.int64)])

    def readable(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.parent.readable(self.indices[np.asarray(indices, dtype=np.int64)])

    def corrupt_report(self, limit: int = 20):
        """The parent's report of skipped unreadable images (see ``bitkit.data.corrupt``)."""
        report = getattr(self.parent, "corrupt_report", None)
        if report is None:
            raise AttributeError(f"{type(self.parent).__name__} never has unreadable images")
        return report(limit)

    def example_id(self, index: int) -> str:
        return self.parent.example_id(int(self.indices[self._check_index(index)]))

    def __repr__(self) -> str:
        return f"SubsetDataset({self.parent!r}, n={len(self)}{', ' + self.tag if self.tag else ''})"


class JoinedDataset(ImageDataset):
    """Datasets of one card one after another, e.g. VTAB's ``train800val200`` where it reads two
    source splits (``train[:800]+validation[:200]``). Keeps the card, class names and each
    example's own id; ``parts`` are the pieces in order."""

    def __init__(self, parts: Sequence[ImageDataset], tag: str = ""):
        if not parts:
            raise ValueError("JoinedDataset needs at least one dataset")
        first = parts[0]
        for p in parts[1:]:
            if p.card.name != first.card.name or list(p.class_names) != list(first.class_names):
                raise ValueError(f"JoinedDataset joins splits of one dataset with the same "
                                 f"classes; got {first.card.name}:{first.split} and "
                                 f"{p.card.name}:{p.split}")
        self.parts = list(parts)
        self.card, self.num_classes = first.card, first.num_classes
        self.class_names, self.multi_label = first.class_names, first.multi_label
        self.split = "+".join(dict.fromkeys(p.split for p in parts))
        self.tag = tag
        self._starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part = np.searchsorted(self._starts, indices, side="right") - 1
        return part, indices - self._starts[part]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        (part,), (j,) = self._locate(np.array([self._check_index(index)]))
        return self.parts[int(part)][int(j)]

    def _per_part(self, indices: Sequence[int] | np.ndarray, method: str) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        part, local = self._locate(idx)
        pieces = [(k, getattr(self.parts[k], method)(local[part == k])) for k in np.unique(part)]
        out = np.empty((len(idx), *pieces[0][1].shape[1:]), pieces[0][1].dtype) if pieces else \
            np.empty(0, dtype=np.int64)
        for k, values in pieces:
            out[part == k] = values
        return out

    def labels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._per_part(indices, "labels")

    def readable(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._per_part(indices, "readable").astype(bool)

    def example_id(self, index: int) -> str:
        (part,), (j,) = self._locate(np.array([self._check_index(index)]))
        return self.parts[int(part)].example_id(int(j))

    def corrupt_report(self, limit: int = 20) -> CorruptReport:
        """The skipped unreadable images of the datasets under the parts, added up (a part
        that is a subset reports its whole parent split, as :class:`SubsetDataset` does)."""
        reports = []
        for ds in {id(r): r for r in (getattr(p, "parent", p) for p in self.parts)}.values():
            report = getattr(ds, "corrupt_report", None)
            if report is not None:
                reports.append(report(limit))
        if not reports:
            raise AttributeError(f"{type(self.parts[0]).__name__} never has unreadable images")
        return CorruptReport(sum(r.count for r in reports),
                             [i for r in reports for i in r.ids][:limit],
                             sum(r.total for r in reports))

    def __repr__(self) -> str:
        inner = " + ".join(repr(p) for p in self.parts)
        return f"JoinedDataset({inner}{', ' + self.tag if self.tag else ''})"
