"""TrainingMonitor: live curves, progress, ETA and a stop button for ``bitkit.train.fit``.

``fit`` announces what happens as :class:`~bitkit.events.Event` objects; the monitor is one
more observer. Wiring, for a notebook::

    monitor = TrainingMonitor()
    monitor                                     # shows the panel
    monitor.start(model, train, config, eval_data=test, out_dir="runs/x")
    # next cell: result = monitor.result()     # waits for the end, returns fit's FitResult

Why ``start`` rather than calling ``fit`` in the cell: while a cell runs, the kernel does not
read messages from the browser, so a click on "Stop" would only arrive after training ended.
``start`` runs ``fit`` in a background thread and returns at once; the click sets
``monitor.control`` and ``fit`` writes a checkpoint and returns after the current step.
Calling ``fit(model, train, config, observers=[monitor], control=monitor.control)`` yourself
works too (curves and progress update live, the stop button is disabled since it cannot be
heard; use Kernel > Interrupt). Headless (papermill), the output the monitor was displayed in is
replaced by a static figure of the whole run when it ends.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
from IPython.display import display, update_display
from plotly.subplots import make_subplots

from bitkit.events import Event, Observer, RunControl
from widgets._common import Panel, figure_html, guarded, heading, section, table

#: (trace name, subplot column, colour, mode) in trace order.
TRACES = (
    ("train loss", 1, "#1f77b4", "lines"),
    ("eval loss", 1, "#ff7f0e", "lines+markers"),
    ("learning rate", 2, "#2ca02c", "lines"),
    ("eval top-1", 3, "#d62728", "lines+markers"),
    ("eval top-5", 3, "#9467bd", "lines+markers"),
)


def format_seconds(s: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour) for ETAs and elapsed times."""
    s = max(0, int(round(s)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _new_figure() -> go.Figure:
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Loss", "Learning rate", "Accuracy (%)"),
                        horizontal_spacing=0.08)
    for name, col, colour, mode in TRACES:
        fig.add_scatter(x=[], y=[], name=name, mode=mode, line=dict(color=colour), row=1, col=col)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="optimizer step", row=1, col=col)
    fig.update_yaxes(title_text="cross-entropy", row=1, col=1)
    fig.update_yaxes(title_text="lr", exponentformat="e", row=1, col=2)
    fig.update_yaxes(title_text="% correct", row=1, col=3)
    fig.update_layout(height=330, margin=dict(l=55, r=20, t=60, b=45),
                      legend=dict(orientation="h", y=-0.25), title="Training")
    return fig


class TrainingMonitor(Panel):
    """An observer for ``fit``: live loss / lr / accuracy curves, progress, ETA, stop button.

    ``min_interval_s`` limits how often the curves are redrawn (each redraw sends the whole
    series to the browser); eval, checkpoint and end events always redraw.
    """

    title = "training monitor"

    def __init__(self, title: str = "Training", *, min_interval_s: float = 0.5,
                 max_points: int = 2000) -> None:
        super().__init__()
        self.title = title
        self.control = RunControl()
        self.min_interval_s, self.max_points = min_interval_s, max_points
        self.series: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n, *_ in TRACES}
        self.checkpoints: list[tuple[int, str]] = []
        self.step, self.total_steps = 0, 0
        self.reason: str | None = None
        self.eta_s: float | None = None
        self._t0: tuple[float, int] | None = None  # (time, step) when the run (re)started
        self._last_draw = 0.0
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._outcome: dict[str, Any] = {}
        self._display_ids: list[str] = []

        self.progress = W.IntProgress(value=0, min=0, max=1, bar_style="info",
                                      layout=W.Layout(width="420px"))
        self.progress_text = W.HTML("waiting for fit to start")
        self.stop_button = W.Button(description="Stop (writes a checkpoint)", icon="stop",
                                    button_style="danger", layout=W.Layout(width="230px"))
        self.hint = W.HTML()
        self.events = W.HTML()
        self.figure = go.FigureWidget(_new_figure())
        self.figure.layout.title = title
        self.figures = [self.figure]
        self.stop_button.on_click(self._on_stop)
        self._root = W.VBox([
            heading(title, "fit events: loss, lr, eval accuracy"),
            W.HBox([self.progress, self.stop_button], layout=W.Layout(align_items="center")),
            self.progress_text, self.hint, self.status, self.figure, self.events,
        ], layout=W.Layout(max_width="1100px"))

    # -- the stop button and background runs ------------------------------------------------

    @guarded
    def _on_stop(self, _button: W.Button) -> None:
        self.control.request_stop("stop button")
        self.stop_button.disabled = True
        self.stop_button.description = "Stopping after this step…"

    def start(self, model: Any, train_data: Any, config: Any, *,
              observers: Sequence[Observer] = (), **fit_kwargs: Any) -> None:
        """Run ``bitkit.train.fit`` in a background thread with this monitor and its control.

        Returns at once so the kernel stays free to hear the stop button. ``fit_kwargs`` go to
        ``fit`` (``eval_data``, ``out_dir``). Collect the outcome with :meth:`result`.
        """
        from bitkit.train import fit

        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this monitor is already watching a run; wait for monitor.result() "
                               "or create a new TrainingMonitor")
        if self.control.stop_requested:
            self.control = RunControl()  # a new run after a stopped one
        self._outcome = {}

        def run() -> None:
            try:
                self._outcome["result"] = fit(model, train_data, config,
                                              observers=[*observers, self], control=self.control,
                                              **fit_kwargs)
            except BaseException as e:  # handed to result(), which re-raises in the caller
                self._outcome["error"] = e
                self._finish(f"failed: {type(e).__name__}: {e}")

        self._thread = threading.Thread(target=run, name="bitkit-fit", daemon=True)
        self._thread.start()

    def result(self, timeout: float | None = None) -> Any:
        """Wait for a run begun with :meth:`start`; return its ``FitResult`` or raise its error."""
        if self._thread is None:
            raise RuntimeError("no run was started with monitor.start(...)")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the run is still going after {timeout} s (step {self.step} of "
                               f"{self.total_steps})")
        self.refresh_static()  # from the caller's thread: papermill records it in this cell
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["result"]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the observer ------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.kind == "start":
                self._on_start(event)
            elif event.kind == "step":
                self._on_step(event)
            elif event.kind == "eval":
                # fit reports accuracies as fractions; the chart shows percent.
                for key, name, scale in (("loss", "eval loss", 1), ("top1", "eval top-1", 100),
                                         ("top5", "eval top-5", 100)):
                    if key in event.metrics:
                        self._append(name, event.step, scale * event.metrics[key])
                self.redraw()
            elif event.kind == "checkpoint":
                self.checkpoints.append((event.step, event.path or ""))
                self._show_events()
            elif event.kind == "end":
                self.step = event.step
                self._finish(event.reason or "done")

    def _on_start(self, event: Event) -> None:
        self.step, self.total_steps, self.reason = event.step, event.total_steps, None
        self._t0 = (event.time, event.step)
        self.progress.max, self.progress.value = max(1, event.total_steps), event.step
        self.progress.bar_style = "info"
        foreground = threading.current_thread() is threading.main_thread()
        self.stop_button.disabled = foreground or self.control.stop_requested
        self.stop_button.description = "Stop (writes a checkpoint)"
        self.hint.value = (
            '<span style="color:#666;font-size:12px">fit runs in this cell, so the kernel '
            "cannot hear the stop button until it returns: use monitor.start(...) to run it in "
            "the background, or Kernel &gt; Interrupt.</span>" if foreground else "")
        resumed = f" (resumed at step {event.step:,})" if event.step else ""
        self.progress_text.value = f"started{resumed}: {event.total_steps:,} steps"
        self.redraw()

    def _on_step(self, event: Event) -> None:
        self.step, self.total_steps = event.step, event.total_steps
        for key, name in (("loss", "train loss"), ("lr", "learning rate")):
            if key in event.metrics:
                self._append(name, event.step, event.metrics[key])
        self.progress.value = event.step
        if self._t0 is not None and event.step > self._t0[1]:
            elapsed = max(event.time - self._t0[0], 1e-9)
            rate = (event.step - self._t0[1]) / elapsed
            self.eta_s = (event.total_steps - event.step) / rate
            speed = event.metrics.get("examples_per_s")
            self.progress_text.value = (
                f"step {event.step:,} / {event.total_steps:,} · {rate:.2f} steps/s"
                + (f" · {speed:,.0f} images/s" if speed else "")
                + f" · elapsed {format_seconds(elapsed)} · ETA {format_seconds(self.eta_s)}")
        if time.monotonic() - self._last_draw >= self.min_interval_s:
            self.redraw()

    def _finish(self, reason: str) -> None:
        with self._lock:
            self.reason = reason
            self.eta_s = 0.0 if reason.startswith("done") else None
            self.stop_button.disabled = True
            self.stop_button.description = "Run ended"
            self.hint.value = ""
            self.progress.bar_style = ("success" if reason.startswith("done") else
                                       "warning" if reason.startswith("stopped") else "danger")
            ckpt = f"; checkpoint at step {self.checkpoints[-1][0]:,}" if self.checkpoints else ""
            self.progress_text.value = (f"<b>{html.escape(reason)}</b> at step {self.step:,} of "
                                        f"{self.total_steps:,}{html.escape(ckpt)}")
            self.redraw()
        self.refresh_static()

    def _append(self, name: str, step: int, value: float | None) -> None:
        xs, ys = self.series[name]
        xs.append(step)
        ys.append(float("nan") if value is None else float(value))

    # -- drawing -----------------------------------------------------------------------------

    def _thinned(self, name: str) -> tuple[list[float], list[float]]:
        xs, ys = self.series[name]
        stride = -(-len(xs) // self.max_points) if len(xs) > self.max_points else 1
        if stride == 1:
            return xs, ys
        keep = list(range(0, len(xs), stride))
        if keep[-1] != len(xs) - 1:
            keep.append(len(xs) - 1)
        return [xs[i] for i in keep], [ys[i] for i in keep]

    def _fill(self, fig: go.Figure, *, compact: bool = False) -> None:
        for trace, (name, *_rest) in zip(fig.data, TRACES, strict=True):
            xs, ys = self._thinned(name)
            if compact:  # a saved copy: 32-bit numbers draw the same curve in ~60% of the bytes
                xs, ys = np.asarray(xs, dtype=np.int32), np.asarray(ys, dtype=np.float32)
            trace.x, trace.y = xs, ys
            trace.visible = True if self.series[name][0] else "legendonly"

    def redraw(self) -> None:
        """Push the curves to the browser (throttled for step events by ``min_interval_s``)."""
        with self._lock, self.figure.batch_update():
            self._fill(self.figure)
        self._last_draw = time.monotonic()
        self._show_events()

    def _show_events(self) -> None:
        if self.checkpoints:
            self.events.value = section("Checkpoints", table(
                ["step", "file"], [(f"{s:,}", p) for s, p in self.checkpoints[-5:]]))

    # -- display -----------------------------------------------------------------------------

    def _ipython_display_(self) -> None:
        # A display id lets the end of the run replace this output's static part (headless runs
        # keep the final figure, not the empty one from before training).
        display_id = f"bitkit-monitor-{id(self)}-{len(self._display_ids)}"
        self._display_ids.append(display_id)
        display(self._repr_mimebundle_(), raw=True, display_id=display_id)

    def refresh_static(self) -> None:
        """Re-send every displayed copy of the panel with the current static figure."""
        for display_id in self._display_ids:
            update_display(self._repr_mimebundle_(), raw=True, display_id=display_id)

    def summary_rows(self) -> list[tuple[str, str]]:
        rows = [("state", self.reason or ("running" if self.step else "not started")),
                ("step", f"{self.step:,} / {self.total_steps:,}")]
        for name in ("train loss", "eval loss", "eval top-1", "eval top-5"):
            ys = self.series[name][1]
            if ys:
                rows.append((f"last {name}", f"{ys[-1]:.4g}"))
        rows += [(f"checkpoint (step {s:,})", p) for s, p in self.checkpoints[-1:]]
        return rows

    def static_html(self) -> str:
        fig = _new_figure()
        fig.update_layout(title=self.title)
        with self._lock:
            self._fill(fig, compact=True)
            evaluated = any(self.series[name][0] for name in ("eval loss", "eval top-1"))
        if not evaluated:  # say why the accuracy panel is empty (pre-training runs do not eval)
            fig.add_annotation(text="no evaluation in this run", xref="x3 domain",
                               yref="y3 domain", x=0.5, y=0.5, showarrow=False,
                               font=dict(color="#888"))
        body = table(["", ""], self.summary_rows())
        if self.step or self.reason:
            body += figure_html(fig)
        return section(f"{self.title} (static copy of the training monitor)", body)
