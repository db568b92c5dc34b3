"""Corrupt or unreadable images: skipped, counted, reported; never the end of a run.

The problem: a web-scale dataset always has a few broken files, and a crash at hour 30 because
of one JPEG is unacceptable. The design, and why it works with ``DataLoader`` workers:

- Each dataset keeps one *shared-memory* flag per example (``torch.zeros(n, bool)
  .share_memory_()``). Worker processes receive the same storage (fork shares it, spawn
  passes its handle), so a flag a worker sets is visible to the main process. Each index is
  only written by the worker that loads it: no locks needed.
- Training (map-style): ``__getitem__`` of an unreadable example flags it and returns the next
  readable example instead, *with that example's own label*: the model only ever sees real
  (image, label) pairs, never an image under another image's label, and batch shapes and the
  default ``collate`` stay unchanged so any training loop works unmodified. ``labels()`` /
  ``targets`` keep describing the data as stored (they are read without decoding images), so
  the skipped example is "skipped and counted", not silently relabelled. ``fit`` reports the
  count and the first ids at the end of a run (its ``end`` event and stderr);
  ``dataset.corrupt_report()`` says the same at any time.
- Label-based selection must not pick a broken example: ``kshot`` keeps the first k *readable*
  examples of each class (it decodes its candidates, ``dataset.readable``), so a k-shot subset
  is exactly balanced and its labels are those of the images it yields.
- Evaluation must not count a substitute twice: ``evaluate.predict`` and
  ``extract_features`` drop the rows of examples flagged during their pass (:func:`unreadable`
  maps any wrapper's positions to the flags) and say how many in the result's ``meta`` and in
  an :class:`UnreadableImagesWarning`. ``dataset.scan()`` flags every unreadable example up
  front, and ``dataset.without_corrupt()`` is the readable rest, for code that needs a clean
  set first.
- Streaming (``bitkit.data.streaming``): an unreadable record is dropped and counted per worker;
  a shard that cannot be read to its end (truncated, not a tar) is counted as broken, its
  readable records kept, and the stream goes on with the next shard.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

#: How many consecutive unreadable examples a lookup skips before deciding the data is broken.
MAX_CONSECUTIVE = 64

#: What a warning about left-out images tells the user to do about them.
FIX_HINT = ("To find all of them up front, call scan() on the split bitkit.data.load returned; "
            "its without_corrupt() is then the readable rest. To keep these examples, replace "
            "their files (an interrupted download?) with readable images; to drop them for good, "
            "delete them.")


class UnreadableImagesWarning(UserWarning):
    """Examples whose image could not be decoded were left out of a result or a copy.

    The message says who left them out, how many, the first ids and how to find and fix the
    files (:data:`FIX_HINT`). A warning, not an error, by design (module docstring); silence it
    with ``warnings.filterwarnings("ignore", category=UnreadableImagesWarning)``.
    """


def warn_unreadable(summary: str, ids: Sequence[str], *, stacklevel: int = 2) -> None:
    """Warn that examples were left out: ``summary`` (who left out how many), the first 20 of
    ``ids`` and :data:`FIX_HINT`, as an :class:`UnreadableImagesWarning`. ``stacklevel`` counts
    from the caller, as in ``warnings.warn``."""
    shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
    warnings.warn(f"{summary}: {shown}. {FIX_HINT}", UnreadableImagesWarning,
                  stacklevel=stacklevel + 1)


@dataclass(frozen=True)
class CorruptReport:
    """What was skipped: a count and the example ids (the first ``limit``)."""

    count: int
    ids: list[str]
    total: int
    broken_shards: int = 0  # streams: shards that could not be read to their end

    def __str__(self) -> str:
        shards = (f"; {self.broken_shards:,} shard(s) could not be read to the end (the rest of "
                  f"each was skipped)" if self.broken_shards else "")
        if not self.count:
            return f"no unreadable images among {self.total:,}{shards}"
        if not self.ids:  # streamed records are dropped where they are read: no ids
            return f"skipped {self.count:,} unreadable image(s) of {self.total:,}{shards}"
        more = f" (first {len(self.ids)} listed)" if len(self.ids) < self.count else ""
        return (f"skipped {self.count:,} unreadable image(s) of {self.total:,}{more}: "
                + ", ".join(self.ids) + shards)


class CorruptFlags:
    """One shared-memory flag per example, set when the example cannot be decoded."""

    def __init__(self, n: int):
        self.flags = torch.zeros(n, dtype=torch.bool).share_memory_()

    def mark(self, index: int) -> None:
        self.flags[index] = True

    def count(self) -> int:
        return int(self.flags.sum())

    def indices(self) -> torch.Tensor:
        return torch.nonzero(self.flags).flatten()


@dataclass(frozen=True)
class FlagLookup:
    """The flags of the dataset under some wrappers (``holder``), seen through their positions:
    ``lookup(rows)`` says which of the wrapper's examples ``rows`` (an index array or slice)
    were flagged unreadable. Made once per pass (``positions`` is as long as the data), then
    asked per batch."""

    holder: Any
    positions: np.ndarray

    def __call__(self, rows: Any = slice(None)) -> np.ndarray:
        return self.holder.corrupt.flags.numpy()[self.positions[rows]]


def flag_holder(data: Any) -> FlagLookup | None:
    """A :class:`FlagLookup` for ``data``: the dataset under its wrappers that holds
    :class:`CorruptFlags`, and the position in it of each of ``data``'s examples; ``None`` for
    data that never has unreadable images.

    Follows ``DataLoader.dataset``, ``Preprocessed.raw`` (same positions), and
    ``SubsetDataset.parent`` / ``torch.utils.data.Subset.dataset`` (positions through their
    ``indices``), so a k-shot subset of a preprocessed split maps to the split's own flags.
    """
    ds, positions = data, None
    for _ in range(16):  # wrappers are shallow; a bound, not a loop over a cycle
        if isinstance(getattr(ds, "corrupt", None), CorruptFlags):
            return FlagLookup(ds, np.arange(len(ds)) if positions is None else positions)
        inner = next((getattr(ds, a) for a in ("raw", "parent", "dataset")
                      if getattr(ds, a, None) is not None), None)
        if inner is None:
            return None
        indices = getattr(ds, "indices", None)
        if indices is not None:  # a subset: its i-th example is the parent's indices[i]
            indices = np.asarray(indices, dtype=np.int64)
            positions = indices if positions is None else indices[positions]
        ds = inner
    return None


def unreadable(data: Any) -> np.ndarray | None:
    """Bool per example of ``data``: was it flagged unreadable (so that a lookup returned a
    substitute in its place)? ``None`` for data that never has unreadable images."""
    lookup = flag_holder(data)
    return None if lookup is None else lookup()


def readable_items(dataset: Any, indices: Sequence[int], what: str,
                   batch_size: int = 256) -> Iterator[tuple[int, Any, Any]]:
    """``(index, image, target)`` of each of ``indices`` whose image decodes, fetched a batch at
    a time; an unreadable one (whose lookup yields a neighbour in its place) is left out, and
    an :class:`UnreadableImagesWarning` gives the count and first ids at the end, under
    ``what``. For writing a dataset
    out (``to_hf``, ``write_shards``): a copy must not hold a neighbour under another id."""
    skipped: list[str] = []
    get = getattr(dataset, "__getitems__", None)
    lookup = flag_holder(dataset)
    for lo in range(0, len(indices), batch_size):
        idx = [int(i) for i in indices[lo:lo + batch_size]]
        items = get(idx) if get else [dataset[i] for i in idx]
        # flagged while this batch was fetched
        bad = lookup(idx) if lookup is not None else np.zeros(len(idx), bool)
        for i, (image, target), broken in zip(idx, items, bad, strict=True):
            if broken:
                skipped.append(str(dataset.example_id(i)))
                continue
            yield i, image, target
    if skipped:
        # stacklevel 1: this generator's callers are tqdm and datasets, not the user's code
        warn_unreadable(f"{what}: left out {len(skipped)} unreadable image(s)", skipped,
                        stacklevel=1)


def decode(value: object) -> Image.Image | None:
    """An RGB PIL image from a ``datasets.Image(decode=False)`` cell, raw bytes, a path or a
    PIL image; ``None`` when it cannot be decoded (truncated, not an image, unreadable file)."""
    try:
        if isinstance(value, Image.Image):
            return value.convert("RGB")
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            img = Image.open(io.BytesIO(value))
        elif isinstance(value, str):
            img = Image.open(value)
        else:
            return None
        img.load()  # force decoding now: truncated files fail here, not later in a worker
        return img.convert("RGB")
    except Exception:  # any decoding failure means "corrupt", by design (see module doc)
        return None
