"""Streaming for upstream-scale data: tar shards (WebDataset layout) or HF streaming datasets.

ImageNet-21k (14M images) or a JFT-sized embedded world does not fit in memory, and random
access over a network file system is slow. The standard answer, used here, is sequential reads
of many shards with two levels of shuffling:

1. the *shard order* is shuffled every epoch (seed, epoch), and shards are dealt out to
   (rank, DataLoader worker) pairs, so every process reads different files;
2. a *shuffle buffer* of ``buffer_size`` examples mixes examples across the shards a process is
   reading (larger buffer = closer to a global shuffle, more memory).

Shards are plain POSIX tar files in the WebDataset convention: members ``<key>.<ext>`` grouped
by key, an image (``.png``/``.jpg``/``.jpeg``/``.webp``) and a label (``.cls``: an integer;
``.json``: a list of class ids for multi-label). :func:`write_shards` writes them from any raw
dataset (e.g. to materialise the embedded world). Unreadable images are skipped and counted
(``skipped()``), a shard that breaks off is counted (``broken_shards()``); neither is fatal.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from tqdm.auto import tqdm

from bitkit.data.base import ImageDataset
from bitkit.data.cards import DataCard
from bitkit.data.corrupt import decode, readable_items
from bitkit.data.transforms import to_uint8

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
_MAX_WORKERS = 256


def write_shards(dataset: ImageDataset, out_dir: str | os.PathLike, *, shard_size: int = 1000,
                 prefix: str = "shard", progress: bool = True) -> list[Path]:
    """Write ``dataset`` as tar shards of ``shard_size`` examples (PNG images, ``.cls`` or
    ``.json`` labels, keys from ``example_id``). Returns the shard paths. Unreadable images are
    left out (a shard may then hold fewer) and named in an ``UnreadableImagesWarning``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    n = len(dataset)
    items = readable_items(dataset, range(n), f"write_shards({out})")
    tar: tarfile.TarFile | None = None
    shard = -1
    try:
        for i, image, target in tqdm(items, total=n, desc="write shards", disable=not progress):
            if i // shard_size != shard:  # the first example of the next shard
                if tar is not None:
                    tar.close()
                shard = i // shard_size
                paths.append(out / f"{prefix}-{shard:06d}.tar")
                tar = tarfile.open(paths[-1], "w")
            png = io.BytesIO()
            Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(png, "PNG")
            if dataset.multi_label:
                label, ext = json.dumps(torch.nonzero(target).flatten().tolist()).encode(), "json"
            else:
                label, ext = str(int(target)).encode(), "cls"
            key = f"{i:09d}"
            _add(tar, f"{key}.png", png.getvalue())
            _add(tar, f"{key}.{ext}", label)
            _add(tar, f"{key}.id", dataset.example_id(i).encode())
    finally:
        if tar is not None:
            tar.close()
    return paths


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _records(path: str) -> Iterator[dict[str, bytes]]:
    """Group consecutive tar members by key (``a/b/000001.png`` -> key ``a/b/000001``)."""
    current: dict[str, bytes] = {}
    key = None
    with tarfile.open(path, "r|*") as tar:  # streaming mode: no seeking, works on pipes
        for member in tar:
            if not member.isfile():
                continue
            stem, _, ext = member.name.rpartition(".")
            if stem != key and current:
                yield current
                current = {}
            key = stem
            current[ext.lower()] = tar.extractfile(member).read()
            current["__key__"] = stem.encode()
    if current:
        yield current


class ShardStream(IterableDataset):
    """Raw ``(PIL image, target)`` pairs streamed from tar shards, shuffled by shard and buffer.

    Args:
        shards: shard paths or one glob pattern (``"/data/in21k/train-*.tar"``).
        num_classes: needed for multi-hot targets of multi-label shards (default: the card's).
        card: the dataset's card, when it has one: ``preprocess`` then follows its flip/crop
            permissions and resolution, as for a map-style dataset.
        buffer_size: shuffle buffer (0 disables shuffling: shards in order, for evaluation).
        rank, world_size: this process's place among distributed processes.
    Call ``set_epoch(e)`` at each epoch start for a new shard order and buffer shuffle.
    """

    def __init__(self, shards: Sequence[str | os.PathLike] | str, *,
                 num_classes: int | None = None, card: DataCard | None = None,
                 buffer_size: int = 1000, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        num_classes = num_classes if num_classes is not None else getattr(card, "num_classes",
                                                                          None)
        if num_classes is None:
            raise ValueError("ShardStream needs num_classes= (or card= of a card that has it)")
        files = sorted(glob.glob(shards)) if isinstance(shards, str) else [str(s) for s in shards]
        if not files:
            raise FileNotFoundError(f"no shard files match {shards!r}")
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"shard file(s) not found: {missing[:3]}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size; got rank={rank}, "
                             f"world_size={world_size}")
        self.shards, self.num_classes, self.card = files, int(num_classes), card
        self.buffer_size, self.seed = buffer_size, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self._skipped = torch.zeros(_MAX_WORKERS, dtype=torch.int64).share_memory_()
        self._broken = torch.zeros(_MAX_WORKERS, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skipped(self) -> int:
        """Unreadable records dropped so far, summed over DataLoader workers."""
        return int(self._skipped.sum())

    def broken_shards(self) -> int:
        """Shards that could not be read to their end so far, summed over DataLoader workers
        (each is counted every epoch it is read)."""
        return int(self._broken.sum())

    def check_readers(self, num_workers: int) -> None:
        """Fail when some process would read no shard at all.

        Shards are dealt to (rank, DataLoader worker) readers, ``world_size x workers`` of
        them; with fewer shards than readers the last ranks get nothing, yield no batch, and
        under DDP the other ranks wait for them in the gradient all-reduce forever. One process
        with idle workers is harmless (its other workers read everything), so only
        ``world_size > 1`` is an error.
        """
        readers = self.world_size * max(1, num_workers)
        if self.world_size > 1 and len(self.shards) < readers:
            raise ValueError(
                f"{len(self.shards)} shard(s) for {self.world_size} process(es) x "
                f"{max(1, num_workers)} DataLoader worker(s) = {readers} readers: some processes "
                f"would get no data and distributed training would hang. Write at least "
                f"{readers} shards (write_shards with a smaller shard_size), or use fewer "
                f"DataLoader workers (num_workers) or processes.")

    def my_shards(self) -> list[str]:
        """The shards this (rank, worker) reads this epoch: a seeded shuffle dealt round-robin."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        self.check_readers(nw)
        order = list(self.shards)
        if self.buffer_size > 0:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(order))
            order = [order[i] for i in perm]
        slot, slots = self.rank * nw + wid, self.world_size * nw
        return order[slot::slots]

    def _parse(self, rec: dict[str, bytes]) -> tuple[Image.Image, Any] | None:
        ext = next((e for e in IMAGE_EXTS if e in rec), None)
        image = decode(rec[ext]) if ext else None
        if image is None:
            return None
        if "cls" in rec:
            return image, int(rec["cls"])
        if "json" in rec:
            hot = torch.zeros(self.num_classes)
            hot[json.loads(rec["json"])] = 1.0
            return image, hot
        return None

    def __iter__(self) -> Iterator[tuple[Image.Image, Any]]:
        info = get_worker_info()
        wid = info.id if info else 0
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, wid])
        buffer: list[tuple[Image.Image, Any]] = []
        for shard in self.my_shards():
            for item in self._read(shard, wid):
                if self.buffer_size <= 0:
                    yield item
                    continue
                if len(buffer) < self.buffer_size:
                    buffer.append(item)
                    continue
                j = int(rng.integers(len(buffer)))
                buffer[j], item = item, buffer[j]
                yield item
        rng.shuffle(buffer)
        yield from buffer

    def _read(self, shard: str, wid: int) -> Iterator[tuple[Image.Image, Any]]:
        """The readable records of one shard. Unreadable records are counted (``skipped``); a
        shard that breaks off (truncated copy, not a tar, disk error) keeps the records read so
        far, is counted (``broken_shards``) and named in a warning, and the stream goes on."""
        try:
            for rec in _records(shard):
                item = self._parse(rec)
                if item is None:
                    self._skipped[wid] += 1
                    continue
                yield item
        except (tarfile.TarError, OSError, EOFError) as e:
            self._broken[wid] += 1
            warnings.warn(f"{shard}: unreadable from here on ({type(e).__name__}: {e}); "
                          "skipping the rest of this shard", RuntimeWarning, stacklevel=2)


class HFStream(IterableDataset):
    """Raw ``(PIL image, target)`` pairs from an HF streaming dataset (hub id, or local parquet
    ``data_files``). ``datasets`` shuffles shard order and a buffer (``buffer_size``) and deals
    shards to DataLoader workers; ``rank``/``world_size`` split it across processes (they may
    be changed before iterating; ``fit`` sets them under DDP). Call ``set_epoch(e)`` each epoch.
    Targets are class ids, or multi-hot float vectors over the card's classes when the card is
    multi-label (as ``bitkit.data.load`` and ``ShardStream`` give them, and as sigmoid CE
    needs). Unreadable images are skipped and counted (``skipped()``)."""

    def __init__(self, card: DataCard, split: str, *, data_files: str | Sequence[str] | None = None,
                 buffer_size: int = 1000, seed: int = 0, rank: int = 0, world_size: int = 1):
        import datasets

        src = card.splits[split]
        if data_files is not None:
            ds = datasets.load_dataset("parquet", data_files={src: data_files}, split=src,
                                       streaming=True)
        elif card.source.kind == "hub":
            ds = datasets.load_dataset(card.source.hub_id, card.source.config, split=src,
                                       streaming=True)
        else:
            raise ValueError(f"{card.name} has no hub copy; pass data_files=... (local parquet)")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size; got rank={rank}, "
                             f"world_size={world_size}")
        self.image_column = card.source.image_column or "image"
        self.label_column = card.source.label_column or "label"
        ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        if buffer_size > 0:
            ds = ds.shuffle(seed=seed, buffer_size=buffer_size)
        self._ds = ds
        self.card, self.num_classes = card, card.num_classes
        self.multi_label = bool(card.multi_label)
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self._skipped = torch.zeros(_MAX_WORKERS, dtype=torch.int64).share_memory_()

    @property
    def hf(self) -> Any:
        """The ``datasets.IterableDataset`` this process reads (its node's split, this epoch)."""
        from datasets.distributed import split_dataset_by_node

        ds = (split_dataset_by_node(self._ds, self.rank, self.world_size)
              if self.world_size > 1 else self._ds)
        ds.set_epoch(self.epoch)
        return ds

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skipped(self) -> int:
        return int(self._skipped.sum())

    def _target(self, label: Any) -> Any:
        if not self.multi_label:
            return int(label)
        hot = torch.zeros(self.num_classes)
        ids = [label] if isinstance(label, int) else list(label)
        if ids and not all(0 <= int(i) < self.num_classes for i in ids):
            raise ValueError(f"{self.card.name}: label ids {ids} outside the card's "
                             f"{self.num_classes} classes")
        hot[ids] = 1.0
        return hot

    def __iter__(self) -> Iterator[tuple[Image.Image, Any]]:
        info = get_worker_info()
        wid = info.id if info else 0
        for ex in self.hf:
            image = decode(ex[self.image_column])
            if image is None:
                self._skipped[wid] += 1
                continue
            yield image, self._target(ex[self.label_column])
