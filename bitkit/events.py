"""Training events and the observers that listen to them.

``fit`` announces what happens (``start``, ``step``, ``eval``, ``checkpoint``, ``end``) as
:class:`Event` objects and calls every observer with each one. Progress bars, ``metrics.jsonl``,
the notebook's live monitor and a widget's stop button are all observers: the loop imports none
of them, and the same loop runs headless under ``torchrun``.

A :class:`RunControl` carries one request back into the loop: "stop cleanly". The loop finishes
the current optimizer step, writes a checkpoint and returns. Preemption signals (SIGTERM,
SIGUSR1) use the same path.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bitkit.fileio import atomic_write_text

EventKind = Literal["start", "step", "eval", "checkpoint", "end"]


class RunControl:
    """A thread-safe "please stop" flag shared by the loop, observers, widgets and signal handlers.

    >>> control = RunControl()
    >>> stop_button.on_click(lambda _: control.request_stop("stop button"))  # doctest: +SKIP
    >>> fit(model, data, config, control=control)  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._flag = threading.Event()
        self.reason: str | None = None

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._flag.is_set():
            self.reason = reason
            self._flag.set()

    @property
    def stop_requested(self) -> bool:
        return self._flag.is_set()


@dataclass
class Event:
    """Something that happened in a run. ``step`` counts optimizer steps done so far.

    ``metrics``: for ``step``, the training ``loss``, ``lr`` and ``examples_per_s``; for ``eval``,
    ``loss`` (mean per example), ``top1`` and (with more than 5 classes) ``top5``: accuracies are
    fractions in [0, 1], like ``Report.top1`` (display code formats them as percent); for
    ``end`` of a run over file-backed data, ``corrupt_skipped`` (count of unreadable training
    images skipped) and ``corrupt_ids`` (the first 20 of their example ids, a list). ``path``
    is set for ``checkpoint``; ``reason`` for ``end`` ("done", "stopped: ...", "diverged: ...",
    "interrupted"). ``time`` is Unix time.
    """

    kind: EventKind
    step: int
    total_steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    reason: str | None = None
    time: float = field(default_factory=time.time)
    control: RunControl | None = field(default=None, repr=False, compare=False)

    def request_stop(self, reason: str = "stop requested by an observer") -> None:
        """Ask the run to stop after this step (a checkpoint is written first)."""
        if self.control is None:
            raise RuntimeError("this event was not emitted by a running fit(); nothing to stop")
        self.control.request_stop(reason)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "step": self.step, "total_steps": self.total_steps,
                             "time": self.time}
        if self.metrics:
            d["metrics"] = self.metrics
        if self.path is not None:
            d["path"] = self.path
        if self.reason is not None:
            d["reason"] = self.reason
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(d["kind"], d["step"], d["total_steps"], dict(d.get("metrics", {})),
                   d.get("path"), d.get("reason"), d.get("time", 0.0))


Observer = Callable[[Event], None]


class JsonlLogger:
    """Appends every event as one JSON line to ``metrics.jsonl``.

    On a resumed run (a ``start`` event with step > 0) records after the resume step are dropped
    first: they came from the part of the killed run that the checkpoint does not contain.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __call__(self, event: Event) -> None:
        if event.kind == "start":
            self._rewind(event.step)
        with self.path.open("a") as f:
            f.write(json.dumps(_finite(event.to_dict())) + "\n")

    def _rewind(self, step: int) -> None:
        kept = [line for line in read_jsonl(self.path) if line["step"] <= step] if step else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN; a diverged loss is written as null so every reader can parse the file.
    m = d.get("metrics")
    if m:
        d["metrics"] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                        for k, v in m.items()}
    return d


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a ``metrics.jsonl`` (a half-written last line is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    records = []
    for line in p.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class ProgressBar:
    """A ``tqdm.auto`` bar: a widget in Jupyter, text in a terminal or a log file."""

    def __init__(self) -> None:
        self._bar = None

    def __call__(self, event: Event) -> None:
        from tqdm.auto import tqdm

        if event.kind == "start":
            self._bar = tqdm(total=event.total_steps, initial=event.step, desc="train",
                             unit="step", dynamic_ncols=True)
        elif self._bar is None:
            return
        elif event.kind == "step":
            self._bar.update(event.step - self._bar.n)
            loss = event.metrics.get("loss", float("nan"))
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{event.metrics.get('lr', 0):.2e}",
                                  refresh=False)
        elif event.kind == "eval":
            self._bar.write(f"step {event.step}: " + ", ".join(
                f"eval {k} {_show(k, v)}" for k, v in event.metrics.items()))
        elif event.kind == "end":
            self._bar.close()
            self._bar = None


def _show(key: str, value: float | None) -> str:
    """A metric for people: accuracies (fractions in the API) as percent, the rest as is."""
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" if key.startswith("top") else f"{value:.4f}"
