"""BiT preprocessing, batched: square resize -> random crop -> random flip, pixels in [-1, 1].

Paper section 3.3 and the released code: at training time resize to a square (aspect ratio not kept), take a
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
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

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
        return _to_float(batch)


@dataclass(frozen=True)
class InceptionTransform:
    """The upstream pre-training transform (paper 3.3: "Inception-style crop to 224 + random
    flip"): a random-resized crop, resized to ``crop x crop``, then a random horizontal flip.

    The crop box is drawn like torchvision's ``RandomResizedCrop`` (Szegedy et al., 2015): an
    area fraction uniform in ``scale`` (8-100% of the image) and an aspect ratio log-uniform in
    ``ratio`` (3/4-4/3); 10 tries for a box that fits, else the central crop of the largest box
    within the ratio limits. Eval (``train=False``): resize to ``crop``, as for BiT's test time.
    ``random_crop=False`` (a card that forbids crops) resizes the whole image instead. All the
    randomness comes from ``generator`` (see :class:`Preprocessed` for why), pixels end in
    [-1, 1]. Unlike :class:`BiTTransform` each box has its own size, so the resize runs per
    image; the uint8 -> float conversion still runs once per batch.
    """

    crop: int
    train: bool
    flip: bool = True
    random_crop: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    attempts: int = 10

    def __post_init__(self) -> None:
        if self.crop < 1:
            raise ValueError(f"crop must be positive, got {self.crop}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]; "
                             f"got scale={self.scale}, ratio={self.ratio}")

    def boxes(self, sizes: Sequence[tuple[int, int]],
              generator: torch.Generator | None = None) -> list[tuple[int, int, int, int]]:
        """``(top, left, height, width)`` of the crop box of each image of size ``(H, W)``."""
        n, k = len(sizes), self.attempts
        u = torch.rand(n, k, 2, generator=generator, dtype=torch.float64).tolist()
        pos = torch.rand(n, k, 2, generator=generator, dtype=torch.float64).tolist()
        lo_r, hi_r = math.log(self.ratio[0]), math.log(self.ratio[1])
        out = []
        for (h_img, w_img), draws, where in zip(sizes, u, pos, strict=True):
            area = h_img * w_img
            for (a, r), (pi, pj) in zip(draws, where, strict=True):
                target = area * (self.scale[0] + a * (self.scale[1] - self.scale[0]))
                aspect = math.exp(lo_r + r * (hi_r - lo_r))
                w = int(round(math.sqrt(target * aspect)))
                h = int(round(math.sqrt(target / aspect)))
                if 0 < w <= w_img and 0 < h <= h_img:
                    out.append((int(pi * (h_img - h + 1)), int(pj * (w_img - w + 1)), h, w))
                    break
            else:  # no draw fitted: the central crop within the ratio limits (as torchvision)
                in_ratio = w_img / h_img
                if in_ratio < self.ratio[0]:
                    w, h = w_img, int(round(w_img / self.ratio[0]))
                elif in_ratio > self.ratio[1]:
                    h, w = h_img, int(round(h_img * self.ratio[1]))
                else:
                    h, w = h_img, w_img
                out.append(((h_img - h) // 2, (w_img - w) // 2, h, w))
        return out

    def __call__(self, images: Sequence[Any] | torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Float32 ``(B, 3, crop, crop)`` in [-1, 1] from PIL images or uint8 tensors."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            tensors = list(images)
        else:
            tensors = [to_uint8(im) for im in images]
        n = len(tensors)
        if not (self.train and self.random_crop):
            if len({t.shape for t in tensors}) == 1:
                batch = _resize(torch.stack(tensors), self.crop)
            else:
                batch = torch.cat([_resize(t[None], self.crop) for t in tensors])
        else:
            boxes = self.boxes([tuple(t.shape[-2:]) for t in tensors], generator)
            batch = torch.cat([_resize(t[None, :, i:i + h, j:j + w], self.crop)
                               for t, (i, j, h, w) in zip(tensors, boxes, strict=True)])
        if self.train and self.flip:
            flip = torch.rand(n, generator=generator) < 0.5
            if flip.any():
                batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        return _to_float(batch)


def _to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1], contiguous, in one conversion pass."""
    out = torch.empty(batch.shape, dtype=torch.float32)
    out.copy_(batch)
    return out.mul_(1.0 / 127.5).sub_(1.0)


Transform = BiTTransform | InceptionTransform


def transform_for(train: bool, resize: int | None, crop: int, *, flip: bool = True,
                  random_crop: bool = True) -> Transform:
    """BiT's fine-tuning transform for ``resize``/``crop``; the upstream Inception-style one
    when ``resize`` is None (``hyperrule.upstream`` gives ``resize=None, crop=224``: upstream
    training crops a random box of any size and aspect, there is no fixed resize first)."""
    if resize is None:
        return InceptionTransform(crop, train, flip=flip, random_crop=random_crop)
    return BiTTransform(resize, crop, train, flip=flip, random_crop=random_crop)


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

    def __init__(self, raw: ImageDataset, transform: BiTTransform | InceptionTransform,
                 seed: int = 0):
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


def _permissions(raw: Any, flip: bool | None, random_crop: bool | None) -> tuple[bool, bool]:
    """Flip and random crop allowed? What the caller says, else the data's card (supplementary
    E: a flip or crop destroys some structured labels), else both."""
    card = getattr(raw, "card", None)
    return (flip if flip is not None else card.flip if card is not None else True,
            random_crop if random_crop is not None else card.crop if card is not None else True)


def sizes_for(raw: Any, resize: int | None, crop: int | None) -> tuple[int | None, int]:
    """Explicit sizes; or ``crop`` alone (the upstream Inception-style crop, ``resize=None``);
    else the card's ``resolution``; else ask for HyperRule's numbers."""
    card = getattr(raw, "card", None)
    if crop is not None:
        return resize, crop
    if resize is None and card is not None and card.resolution is not None:
        return card.resolution
    name = card.name if card is not None else type(raw).__name__
    raise ValueError(
        f"{name}: give both resize= and crop= (BiT-HyperRule: bitkit.hyperrule gives 160/128 "
        f"below 96x96 pixels, else 512/480), crop= alone for the upstream Inception-style crop "
        f"(hyperrule.upstream: crop 224), or set 'resolution: [resize, crop]' in its card"
    )


def preprocess(raw: ImageDataset | IterableDataset, train: bool, *, resize: int | None = None,
               crop: int | None = None, seed: int = 0) -> Preprocessed | PreprocessedStream:
    """Wrap a raw dataset with the BiT train or eval transform; flip/crop follow its card.

    Sizes: ``resize`` and ``crop`` give BiT's fine-tuning transform (square resize, random
    crop, flip); ``crop`` alone (``resize=None``, what ``hyperrule.upstream`` returns) gives
    the upstream :class:`InceptionTransform` (random-resized crop to ``crop`` + flip); neither
    gives the card's teaching ``resolution``. ``seed`` varies the random crops/flips (a
    function of the seed and the batch's indices, see :class:`Preprocessed`). A stream
    (``torch.utils.data.IterableDataset``, e.g. ``bitkit.data.streaming.ShardStream``) gets
    :func:`preprocess_stream`.
    """
    if isinstance(raw, IterableDataset):
        return preprocess_stream(raw, train, resize=resize, crop=crop, seed=seed)
    flip, random_crop = _permissions(raw, None, None)
    r, c = sizes_for(raw, resize, crop)
    return Preprocessed(raw, transform_for(train, r, c, flip=flip, random_crop=random_crop),
                        seed=seed)


# ------------------------------------------------------------------------------------------------
# Streams
# ------------------------------------------------------------------------------------------------


class PreprocessedStream(IterableDataset):
    """A raw stream of ``(image, target)`` pairs seen through a BiT transform.

    Images are transformed ``chunk`` at a time (the batched path of the transform) and yielded
    one by one, so a ``DataLoader`` batches them as usual. Augmentation is a pure function of
    ``(seed, epoch, rank, DataLoader worker, chunk position)``: like :class:`Preprocessed` it
    never reads a worker's RNG (the same on every rank and after every resume), and it differs
    per epoch, per process and per worker. ``set_epoch``, ``rank``/``world_size`` and
    ``skipped()`` pass through to the raw stream, which ``fit`` uses to shard and restart it.
    """

    def __init__(self, raw: IterableDataset, transform: Transform, seed: int = 0,
                 chunk: int = 64):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.raw, self.transform, self.seed, self.chunk = raw, transform, int(seed), chunk
        self.epoch = 0
        self.card = getattr(raw, "card", None)
        self.num_classes = getattr(raw, "num_classes", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.raw, "set_epoch"):
            self.raw.set_epoch(epoch)

    def skipped(self) -> int:
        """Unreadable records the raw stream dropped (0 when it cannot tell)."""
        counter = getattr(self.raw, "skipped", None)
        return int(counter()) if counter is not None else 0

    def __getattr__(self, name: str) -> Any:
        # rank, world_size, shards, check_readers, ...: whatever the raw stream offers.
        # (__getattr__ only runs for names the wrapper itself lacks.)
        if name == "raw" or name.startswith("__"):  # unpickling (DataLoader workers), copies
            raise AttributeError(name)
        return getattr(self.raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("rank", "world_size"):  # sharding belongs to the raw stream
            setattr(self.raw, name, value)
        else:
            super().__setattr__(name, value)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        info = get_worker_info()
        worker = info.id if info else 0
        rank = int(getattr(self.raw, "rank", 0))
        pending: list[tuple[Any, Any]] = []
        position = 0
        for item in self.raw:
            pending.append(item)
            if len(pending) == self.chunk:
                yield from self._apply(pending, (self.epoch, rank, worker, position))
                pending, position = [], position + 1
        if pending:
            yield from self._apply(pending, (self.epoch, rank, worker, position))

    def _apply(self, items: list[tuple[Any, Any]], where: tuple[int, ...]) -> list[
            tuple[torch.Tensor, Any]]:
        generator = None
        if self.transform.train:
            generator = torch.Generator().manual_seed(batch_seed(self.seed, where))
        images = self.transform([im for im, _ in items], generator)
        return [(img, target) for img, (_, target) in zip(images, items, strict=True)]


def preprocess_stream(stream: IterableDataset, train: bool, *, resize: int | None = None,
                      crop: int | None = None, flip: bool | None = None,
                      random_crop: bool | None = None, seed: int = 0,
                      chunk: int = 64) -> PreprocessedStream:
    """Wrap a raw stream (``ShardStream``, ``HFStream``) with the BiT train or eval transform.

    Sizes as in :func:`preprocess` (``crop`` alone: the upstream Inception-style crop; neither:
    the stream's card's ``resolution`` when it has a card). ``flip``/``random_crop`` are the
    permissions: None takes them from the stream's card (supplementary E), or allows both for
    a stream without one (``ShardStream`` has none: pass them for a structured task).
    ``chunk`` images are transformed together.
    """
    flip, random_crop = _permissions(stream, flip, random_crop)
    r, c = sizes_for(stream, resize, crop)
    return PreprocessedStream(stream, transform_for(train, r, c, flip=flip,
                                                    random_crop=random_crop), seed, chunk)
