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
- Evaluation must not count a substitute twice: call ``dataset.scan()`` first (one pass that
  flags every unreadable example) and evaluate ``dataset.without_corrupt()``.
- Streaming (``bitkit.data.streaming``): an unreadable record is dropped and counted per worker.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image

#: How many consecutive unreadable examples a lookup skips before deciding the data is broken.
MAX_CONSECUTIVE = 64


@dataclass(frozen=True)
class CorruptReport:
    """What was skipped: a count and the example ids (the first ``limit``)."""

    count: int
    ids: list[str]
    total: int

    def __str__(self) -> str:
        if not self.count:
            return f"no unreadable images among {self.total:,}"
        if not self.ids:  # streamed records are dropped where they are read: no ids
            return f"skipped {self.count:,} unreadable image(s) of {self.total:,}"
        more = f" (first {len(self.ids)} listed)" if len(self.ids) < self.count else ""
        return (f"skipped {self.count:,} unreadable image(s) of {self.total:,}{more}: "
                + ", ".join(self.ids))


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
