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
from collections.abc import Callable, Sequence
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


def replay(path: str | os.PathLike, observers: Sequence[Observer]) -> int:
    """Send a finished run's recorded events (its ``metrics.jsonl``) to ``observers``, in order.

    A cached run is not trained again, but a training monitor, a TensorBoard logger or any
    other observer can still show its curves: they receive the same events ``fit`` sent while
    it ran, with the recorded times. Asking such an event to stop does nothing (the run is
    over). Returns the number of events sent (0 when nothing was recorded).
    """
    control = RunControl()  # the run is over: a stop request has nothing to stop
    records = read_jsonl(path)
    for record in records:
        event = Event.from_dict(record)
        event.control = control
        for observer in observers:
            observer(event)
    return len(records)


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


_TENSORBOARD_MISSING = ("TensorBoardLogger needs the tensorboard package, which is not installed. "
                        "Install it with: pip install 'bitkit[tensorboard]' (or: pip install "
                        "tensorboard)")


class TensorBoardLogger:
    """Writes a run's events as TensorBoard event files in ``log_dir``; follow it with
    ``tensorboard --logdir <log_dir or a folder above it>``.

    Scalars, at ``global_step = event.step``: ``train/loss``, ``train/lr`` and
    ``train/examples_per_s`` at every step event; ``eval/<metric>`` (``eval/loss``,
    ``eval/top1``, ``eval/top5`` when present) at eval events; ``train/corrupt_skipped`` at the
    end when the data reports it. Text (TensorBoard shows the tags with ``/text_summary``
    appended): ``run/config`` at start (``config`` as a table, with the steps the session
    covers) and ``run/end`` (the end reason). With ``hparams`` the flattened
    ``config`` also goes to the HParams dashboard (a session that starts at ``start`` and ends at
    ``end``, metrics taken from the scalars above). Accuracies stay fractions in [0, 1].

    ``config`` is what ran: a :class:`~bitkit.train.TrainConfig`, any dataclass or object with
    ``to_dict()``, or a mapping such as a whole run file (nested keys become ``a.b``).

    The writer opens at ``start``, not here, so a logger built on every rank of a ``torchrun``
    job writes nothing outside rank 0 (``fit`` calls observers on rank 0 only). It is flushed at
    eval, checkpoint and end events (and every ``flush_secs`` in between) and closed at
    ``end``; the next ``start`` opens a new event file. A resumed run (``start`` at step S > 0)
    writes into the same ``log_dir``; its new file begins with a purge marker, so TensorBoard
    hides what the killed run logged after its checkpoint (steps > S) and the curves continue
    without duplicates, as :class:`JsonlLogger` rewinds ``metrics.jsonl``. A fresh start (step 0)
    hides everything older in ``log_dir`` the same way.
    """

    def __init__(self, log_dir: str | os.PathLike, config: Any = None, *, hparams: bool = True,
                 flush_secs: int = 30) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(_TENSORBOARD_MISSING) from e
        self.log_dir = Path(log_dir)
        self.config = _flatten(_as_dict(config)) if config is not None else {}
        self.hparams, self.flush_secs = hparams, flush_secs
        self._summary_writer = SummaryWriter
        self._writer = None

    def __call__(self, event: Event) -> None:
        if event.kind == "start":
            self.close()
            # purge_step T: TensorBoard drops events with step >= T from older files in log_dir.
            self._writer = self._summary_writer(str(self.log_dir), flush_secs=self.flush_secs,
                                                purge_step=event.step + 1 if event.step else 0)
            self._start(event)
            return
        w = self._writer
        if w is None:
            return
        if event.kind == "step":
            self._scalars("train", event)
        elif event.kind == "eval":
            self._scalars("eval", event)
        elif event.kind == "end":
            skipped = event.metrics.get("corrupt_skipped")
            if skipped is not None:
                w.add_scalar("train/corrupt_skipped", skipped, event.step, walltime=event.time)
            w.add_text("run/end", f"step {event.step} of {event.total_steps}: {event.reason}",
                       event.step, walltime=event.time)
            reason = event.reason or ""
            # Only a final end closes the HParams session: TensorBoard keeps the first session end
            # it reads, and a stopped or interrupted run is resumed later in the same log_dir.
            if self.hparams and self.config and reason.startswith(("done", "diverged")):
                self._add_hparams_summary(_session_end(reason), event)
            self.close()
            return
        if event.kind in ("eval", "checkpoint"):
            w.flush()

    def close(self) -> None:
        """Flush and close the event file (``end`` does this; a new ``start`` reopens one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _scalars(self, prefix: str, event: Event) -> None:
        for key, value in event.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}/{key}", value, event.step, walltime=event.time)

    def _start(self, event: Event) -> None:
        head = (f"Steps {event.step} to {event.total_steps}"
                + (f" (resumed at step {event.step})." if event.step else "."))
        rows = "".join(f"| `{k}` | `{_cell(v)}` |\n" for k, v in self.config.items())
        text = head + ("\n\n| setting | value |\n|---|---|\n" + rows if rows else "")
        self._writer.add_text("run/config", text, event.step, walltime=event.time)
        if self.hparams and self.config:
            self._add_hparams_summary(_session_start(self.config, event.time), event)
        self._writer.flush()

    def _add_hparams_summary(self, summary: Any, event: Event) -> None:
        self._writer.file_writer.add_summary(summary, event.step, walltime=event.time)


def _as_dict(config: Any) -> dict[str, Any]:
    import dataclasses
    from collections.abc import Mapping

    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, a dataclass or have to_dict(), not "
                        f"{type(config).__name__}")
    return dict(config)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _cell(value: Any) -> str:  # inside `...` in a markdown table row
    return _text(value).replace("|", "\\|").replace("`", "'")


def _hparams_summary(tag: str, data: Any) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data),
                                        tensor=metadata.NULL_TENSOR)])


def _session_start(config: dict[str, Any], start_time: float) -> Any:
    # The HParams plugin's own format (what add_hparams writes), but into this run's file rather
    # than a new subfolder per call, and with the session's end written at `end`.
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(start_time_secs=start_time)
    for key, value in config.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = _text(value)
    return _hparams_summary(metadata.SESSION_START_INFO_TAG,
                            plugin_data_pb2.HParamsPluginData(session_start_info=info))


def _session_end(reason: str) -> Any:
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    status = api_pb2.STATUS_SUCCESS if reason.startswith("done") else api_pb2.STATUS_FAILURE
    info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    return _hparams_summary(metadata.SESSION_END_INFO_TAG,
                            plugin_data_pb2.HParamsPluginData(session_end_info=info))
