"""BiT preprocessing, batched: square resize -> random crop -> random flip, pixels in [-1, 1].

Paper section 3.3 / FACTS: at training time resize to a square (aspect ratio not kept), take a
random ``crop x crop`` square and flip horizontally at random; at test time only resize to the
crop size. Tasks whose label a flip or a crop destroys skip it (supplementary E): the card's
``flip``/``crop`` flags decide. When crop is off, training resizes straight to the crop size,
so train and test images have the same geometry.

Sizes come from BiT-HyperRule (``bitkit.hyperrule``: 160/128 for images smaller than 96x96,
else 512/480), or from the card's own ``resolution`` for teaching-scale embedded data.

Why batched: one uint8 bilinear resize (antialiased, channels-last) over a whole batch, one
gather for all crops and one ``where`` for all flips cost a fraction of a per-image PIL +
torchvision pipeline (``bench/data_pipeline.py`` prints the ratio). ``DataLoader`` calls
``__getitems__`` with a batch of indices, so any training loop gets the batched path for free.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bitkit.data.base import ImageDataset


def to_uint8(image: Image.Image | torch.Tensor | np.ndarray) -> torch.Tensor:
    """A raw image as a uint8 (3, H, W) tensor (grey and RGBA become RGB)."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    t = torch.as_tensor(image)
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected a PIL image or a uint8 tensor (3, H, W); got "
                         f"{t.dtype} {tuple(t.shape)}")
    return t.expand(3, -1, -1) if t.shape[0] == 1 else t


def _resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Square bilinear resize (antialiased when shrinking), uint8 in and out."""
    if batch.shape[-2:] == (size, size):
        return batch
    x = batch.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


@dataclass(frozen=True)
class BiTTransform:
    """The BiT train or eval transform on a batch of raw images.

    ``random_crop``/``flip`` are the card's permissions; they only matter when ``train``.
    """

    resize: int
    crop: int
    train: bool
    flip: bool = True
    random_crop: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"need 0 < crop <= resize; got resize={self.resize}, "
                             f"crop={self.crop}")

    def __call__(self, images: Sequence[Any] | torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Float32 ``(B, 3, crop, crop)`` in [-1, 1] from PIL images or uint8 tensors."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            batch = self._geometry(images, generator)
        else:
            tensors = [to_uint8(im) for im in images]
            if len({t.shape for t in tensors}) == 1:
                batch = self._geometry(torch.stack(tensors), generator)
            else:  # mixed sizes (real photos): resize each, then continue as a batch
                batch = torch.cat([self._geometry(t[None], generator) for t in tensors])
        return self._to_float(batch)

    def _geometry(self, batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Resize the batch once; then crop windows and flips are views, stacked in one copy
        (measured faster than one advanced-indexing gather, see bench/data_pipeline.py)."""
        n = batch.shape[0]
        crop = self.train and self.random_crop
        out = _resize(batch, self.resize if crop else self.crop)
        flip = (torch.rand(n, generator=generator) < 0.5 if self.train and self.flip
                else torch.zeros(n, dtype=torch.bool))
        if crop:
            top = torch.randint(0, self.resize - self.crop + 1, (n,), generator=generator)
            left = torch.randint(0, self.resize - self.crop + 1, (n,), generator=generator)
        elif not flip.any():
            return out
        views = []
        for i in range(n):
            v = out[i]
            if crop:
                t, l, c = int(top[i]), int(left[i]), self.crop
                v = v[:, t:t + c, l:l + c]
            views.append(v.flip(-1) if flip[i] else v)
        return torch.stack(views)

    def _to_float(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [-1, 1], contiguous, in one conversion pass."""
        out = torch.empty(batch.shape, dtype=torch.float32)
        out.copy_(batch)
        return out.mul_(1.0 / 127.5).sub_(1.0)


def batch_seed(seed: int, indices: Sequence[int]) -> int:
    """A 64-bit seed from ``seed`` and an ordered list of example indices (BLAKE2b)."""
    h = hashlib.blake2b(np.asarray(indices, dtype=np.int64).tobytes(), digest_size=8,
                        key=int(seed).to_bytes(8, "little", signed=True))
    return int.from_bytes(h.digest(), "little")


class Preprocessed(ImageDataset):
    """A raw dataset seen through a :class:`BiTTransform`: items are ``(float tensor
    (3, crop, crop) in [-1, 1], target)``, what ``fit`` consumes. Keeps the raw dataset's card,
    class names, labels and example ids.

    Random crops and flips are a pure function of ``(seed, the batch's index list)``: each call
    of :meth:`__getitems__` seeds its own generator from a 64-bit hash of both, and never reads
    a worker's or the process's RNG. Why: ``DataLoader`` workers start from the same RNG state
    on every DDP rank and again after every resume, so worker-RNG crops would repeat across
    ranks and replay from step 0 after a restart. ``fit``'s sampler gives every (step, rank,
    micro-batch, training seed) its own index list, so crops differ wherever they should and
    are identical for any worker count and after a resume. (A batch repeated with the same
    indices in the same order gets the same crops; with shuffled epochs that does not happen.)
    """

    def __init__(self, raw: ImageDataset, transform: BiTTransform, seed: int = 0):
        self.raw, self.transform, self.seed = raw, transform, int(seed)
        self.card, self.split = raw.card, raw.split
        self.num_classes, self.class_names = raw.num_classes, raw.class_names
        self.multi_label = raw.multi_label

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, Any]]:
        getitems = getattr(self.raw, "__getitems__", None)
        items = getitems(list(indices)) if getitems else [self.raw[i] for i in indices]
        generator = None
        if self.transform.train:  # eval is deterministic: no generator needed
            generator = torch.Generator().manual_seed(batch_seed(self.seed, indices))
        images = self.transform([im for im, _ in items], generator)
        return [(img, target) for img, (_, target) in zip(images, items, strict=True)]

    def labels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.raw.labels(indices)

    def readable(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.raw.readable(indices)

    def example_id(self, index: int) -> str:
        return self.raw.example_id(index)

    def corrupt_report(self, limit: int = 20):
        """The raw dataset's report of skipped unreadable images (see ``bitkit.data.corrupt``)."""
        report = getattr(self.raw, "corrupt_report", None)
        if report is None:
            raise AttributeError(f"{type(self.raw).__name__} never has unreadable images")
        return report(limit)


def sizes_for(raw: ImageDataset, resize: int | None, crop: int | None) -> tuple[int, int]:
    """Explicit sizes, else the card's ``resolution``; else ask for HyperRule's numbers."""
    if resize is not None and crop is not None:
        return resize, crop
    if raw.card.resolution is not None and resize is None and crop is None:
        return raw.card.resolution
    raise ValueError(
        f"{raw.card.name}: give both resize= and crop= (BiT-HyperRule: "
        f"bitkit.hyperrule gives 160/128 below 96x96 pixels, else 512/480), or set "
        f"'resolution: [resize, crop]' in its card"
    )


def preprocess(raw: ImageDataset, train: bool, *, resize: int | None = None,
               crop: int | None = None, seed: int = 0) -> Preprocessed:
    """Wrap a raw dataset with the BiT train or eval transform; flip/crop follow its card.

    ``seed`` varies the random crops/flips (they are a function of the seed and the batch's
    indices, see :class:`Preprocessed`)."""
    r, c = sizes_for(raw, resize, crop)
    return Preprocessed(raw, BiTTransform(r, c, train, flip=raw.card.flip,
                                          random_crop=raw.card.crop), seed=seed)
