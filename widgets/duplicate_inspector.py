"""DuplicateInspector: near-duplicates between upstream training data and a test set.

Supplementary B asks whether test images (or near copies) were in the upstream training data,
and removes them for the "Dedup" columns of its Table 1; Fig. 2 there shows detected pairs with
green (true positive) and red (false positive) borders. This panel shows what a search found and,
when ground truth is known (the planted pairs of the embedded world: ``bitkit.data.world.pairs``),
what it got wrong: every pair is one of

- **found** (green border): a known pair, flagged;
- **look-alike** (blue): flagged, not known, but the aligned pictures are near-identical
  (``bitkit.dedup.LOOKALIKE_ERROR``): a duplicate the data holds by chance;
- **false positive** (red): flagged, neither known nor near-identical;
- **missed** (orange): a known pair the search did not flag.

A threshold slider with live counts and precision/recall, a view per kind, both pictures of each
pair with the scores that decided it, and your own true/false marks (saved to a file; shown as a
badge, never as the border colour, which always means the kind above).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from bitkit.dedup import DuplicateReport, pair_key
from widgets._common import (
    ImageLookup,
    Panel,
    figure_html,
    guarded,
    heading,
    img_tag,
    load_labels,
    pct,
    placeholder,
    save_labels,
    section,
    table,
)

MARKS = ("true duplicate", "false positive")
FORMAT = "bitkit.duplicate-marks/1"
#: Views of the pairs, and the border colour of each kind.
VIEWS = ("flagged", "found", "look-alikes", "false positives", "missed")
KIND_COLOURS = {"found": "#2e7d32", "look-alike": "#1565c0", "false positive": "#c62828",
                "missed": "#ef6c00", None: "#bbb"}
_KIND_OF_VIEW = {"found": "found", "look-alikes": "look_alikes",
                 "false positives": "false_positives", "missed": "missed"}
_KIND_NAME = {"found": "found", "look_alikes": "look-alike",
              "false_positives": "false positive", "missed": "missed"}


def _key(downstream_id: str, upstream_id: str) -> str:
    return f"{downstream_id} | {upstream_id}"


class DuplicateInspector(Panel):
    """Pairs with their similarity, a threshold slider, marks, and precision/recall.

    ``downstream`` / ``upstream``: the datasets the report's ids refer to (for the pictures).
    ``ground_truth``: known pairs, ``(downstream_id, upstream_id)`` or ``DuplicatePair``.
    ``marks``: JSON file your true/false-positive marks are saved to and reloaded from.
    """

    title = "near-duplicates"

    def __init__(self, report: DuplicateReport, *, downstream: Any = None, upstream: Any = None,
                 ground_truth: Iterable[Any] | None = None, marks: str | Path | None = None,
                 page_size: int = 8, thumb: int = 72) -> None:
        super().__init__()
        if not isinstance(report, DuplicateReport):
            raise TypeError(f"DuplicateInspector needs a bitkit.dedup.DuplicateReport; got "
                            f"{type(report).__name__}")
        self.report, self.page_size, self.thumb = report, page_size, thumb
        self.score_label = "pixel score" if report.score_name == "pixel" else "cosine"
        self.truth = None if ground_truth is None else {pair_key(p) for p in ground_truth}
        self._down = ImageLookup(downstream) if downstream is not None else None
        self._up = ImageLookup(upstream) if upstream is not None else None
        self.path = None if marks is None else Path(marks)
        self.marks: dict[str, str] = {} if self.path is None else load_labels(self.path, FORMAT,
                                                                              MARKS)
        self.page = 0
        self.pairs: list[dict[str, Any]] = []
        self.kinds: dict[tuple[str, str], str] = {}
        self.sweep = (report.sweep(self.truth, np.round(np.arange(0.5, 1.0001, 0.005), 4))
                      if self.truth is not None else None)
        finite = report.similarity[np.isfinite(report.similarity)]
        lo = float(np.floor(min(finite.min(), report.threshold) * 100) / 100) if finite.size else 0.5
        self.threshold = W.FloatSlider(value=report.threshold, min=min(lo, 0.99), max=1.0,
                                       step=0.005, readout_format=".3f",
                                       description=f"{self.score_label} ≥",
                                       continuous_update=True,
                                       style={"description_width": "80px"},
                                       layout=W.Layout(width="460px"))
        self.view = W.ToggleButtons(options=list(VIEWS) if self.truth is not None else ["flagged"],
                                    value="flagged", style={"button_width": "auto"})
        self.counts = W.HTML()
        self.prev_button = W.Button(description="◀ Prev", layout=W.Layout(width="90px"))
        self.next_button = W.Button(description="Next ▶", layout=W.Layout(width="90px"))
        self.page_label = W.HTML()
        self.list = W.VBox()
        self.figure = go.FigureWidget(self._figure())
        self.figures = [self.figure]
        self.threshold.observe(self._on_threshold, names="value")
        self.view.observe(self._on_threshold, names="value")
        self.prev_button.on_click(lambda _b: self._turn(-1))
        self.next_button.on_click(lambda _b: self._turn(+1))
        self._root = W.VBox([
            heading("Near-duplicates", "supplementary B: test images with an upstream copy"),
            self.threshold, self.counts, self.status, self.figure, self.view,
            W.HBox([self.prev_button, self.page_label, self.next_button],
                   layout=W.Layout(align_items="center")),
            self.list,
        ], layout=W.Layout(max_width="1100px"))
        self.update()

    # -- numbers -------------------------------------------------------------------------------

    def stats(self, threshold: float | None = None) -> dict[str, Any]:
        """Counts at a threshold; with ground truth, every kind and precision/recall; marks."""
        t = self.threshold.value if threshold is None else threshold
        pairs = self.report.pairs(t)
        keys = {(p["downstream_id"], p["upstream_id"]) for p in pairs}
        out: dict[str, Any] = {"threshold": t, "pairs": len(pairs),
                               "test_images": len({p["downstream_id"] for p in pairs}),
                               "exact": sum(p["exact"] for p in pairs)}
        if self.truth is not None:
            o = self.report.outcomes(self.truth, t)
            tp, look = len(o["found"]), len(o["look_alikes"])
            out.update(true_positives=tp, look_alikes=look,
                       false_positives=len(o["false_positives"]), missed=len(o["missed"]),
                       precision=(tp + look) / len(keys) if keys else None,
                       planted_precision=tp / len(keys) if keys else None,
                       recall=tp / len(self.truth) if self.truth else None)
        marked = [self.marks.get(_key(*k)) for k in keys]
        out["marked_true"] = marked.count("true duplicate")
        out["marked_false"] = marked.count("false positive")
        return out

    def _counts_html(self) -> str:
        s = self.stats()
        parts = [f"<b>{s['pairs']}</b> pairs at {self.score_label} ≥ "
                 f"{s['threshold']:.3f} · <b>{s['test_images']}</b> test images have an "
                 f"upstream duplicate ({s['exact']} byte-identical)"]
        if self.truth is not None:
            parts.append(
                f"against {len(self.truth)} known pairs: "
                f'<span style="color:{KIND_COLOURS["found"]}">{s["true_positives"]} found</span>'
                f' · <span style="color:{KIND_COLOURS["look-alike"]}">{s["look_alikes"]} '
                "look-alikes</span> · "
                f'<span style="color:{KIND_COLOURS["false positive"]}">{s["false_positives"]} '
                "false positives</span> · "
                f'<span style="color:{KIND_COLOURS["missed"]}">{s["missed"]} missed</span>'
                f"<br>precision <b>{pct(s['precision'])}</b> (known pairs and look-alikes; known "
                f"pairs alone {pct(s['planted_precision'])}) · recall <b>{pct(s['recall'])}</b>")
        marked = s["marked_true"] + s["marked_false"]
        if marked:
            parts.append(f"your marks: {s['marked_true']} true, {s['marked_false']} false "
                         f"→ precision among marked {pct(s['marked_true'] / marked)}")
        return '<div style="font-size:13px">' + "<br>".join(parts) + "</div>"

    # -- the figure ----------------------------------------------------------------------------

    def _figure(self) -> go.Figure:
        fig = go.Figure()
        if self.sweep is not None:
            t = [r["threshold"] for r in self.sweep]
            for key, colour in (("precision", "#1f77b4"), ("recall", "#ff7f0e"), ("f1", "#2ca02c"),
                                ("planted_precision", "#9467bd")):
                fig.add_scatter(x=t, y=[None if r[key] is None else 100 * r[key]
                                        for r in self.sweep], name=key.replace("_", " "), mode="lines",
                                line=dict(color=colour, width=2.5,
                                          dash="dot" if key == "planted_precision" else None))
            fig.update_layout(title="Precision and recall against the known pairs",
                              yaxis_title="%")
        else:
            top1 = self.report.similarity[:, 0]
            fig.add_histogram(x=top1[np.isfinite(top1)], nbinsx=60, name="test images",
                              marker_color="#1f77b4")
            fig.update_layout(title=f"{self.score_label.capitalize()} of each test image to "
                                    "its nearest upstream image", yaxis_title="test images")
        fig.update_layout(xaxis_title=f"{self.score_label} threshold", height=300,
                          margin=dict(l=60, r=20, t=50, b=45), legend=dict(orientation="h",
                                                                           y=-0.3))
        self._line(fig)
        return fig

    def _line(self, fig: go.Figure) -> None:
        t = float(self.threshold.value)
        fig.layout.shapes = [dict(type="line", x0=t, x1=t, yref="paper", y0=0, y1=1,
                                  line=dict(color="#d62728", width=2))]

    # -- pairs ---------------------------------------------------------------------------------

    @guarded
    def _on_threshold(self, change: dict[str, Any]) -> None:
        self.page = 0
        self.update()

    @guarded
    def _turn(self, delta: int) -> None:
        pages = max(1, -(-len(self.pairs) // self.page_size))
        self.page = min(max(0, self.page + delta), pages - 1)
        self._show_page()

    @guarded
    def update(self) -> None:
        t = self.threshold.value
        if self.truth is None:
            self.kinds, self.pairs = {}, self.report.pairs(t)
        else:  # one pass sorts every pair: the borders and the current view both read it
            o = self.report.outcomes(self.truth, t)
            self.kinds = {(r["downstream_id"], r["upstream_id"]): _KIND_NAME[kind]
                          for kind, rows in o.items() for r in rows}
            self.pairs = (self.report.pairs(t) if self.view.value == "flagged"
                          else o[_KIND_OF_VIEW[self.view.value]])
        self.counts.value = self._counts_html()
        self._line(self.figure)
        self._show_page()

    def page_pairs(self) -> list[dict[str, Any]]:
        lo = self.page * self.page_size
        return self.pairs[lo:lo + self.page_size]

    def _show_page(self) -> None:
        n, lo = len(self.pairs), self.page * self.page_size
        pages = max(1, -(-n // self.page_size))
        self.page_label.value = (f"&nbsp;pairs {lo + 1 if n else 0}–{min(n, lo + self.page_size)}"
                                 f" of {n}&nbsp;")
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= pages - 1
        self.list.children = [self._row(p) for p in self.page_pairs()]

    def _picture(self, lookup: ImageLookup | None, example_id: str, border: str) -> str:
        image = lookup(example_id) if lookup is not None else None
        if image is None:
            return placeholder(self.thumb, "no image")
        return img_tag(image, self.thumb, title=example_id, border=border)

    def _pair_html(self, p: dict[str, Any]) -> str:
        key = (p["downstream_id"], p["upstream_id"])
        mark = self.marks.get(_key(*key))
        kind = self.kinds.get(key) if self.truth is not None else None
        border = KIND_COLOURS[kind]
        badge = ("" if kind is None else
                 f'<span style="color:{border};font-weight:600">{kind}</span>'
                 + (" (a known pair)" if kind in ("found", "missed") else
                    " (not a known pair)"))
        score = ("not kept as a neighbour" if p.get("similarity") is None else
                 f"{self.score_label} {p['similarity']:.4f}")
        parts = [f"{name.replace('_', ' ')} {p[name]:.3f}"
                 for name in ("detail", "colour_error", "cosine") if p.get(name) is not None]
        return (f'<div style="display:flex;gap:8px;align-items:center;font-size:12px">'
                f"{self._picture(self._down, p['downstream_id'], border)}"
                f"{self._picture(self._up, p['upstream_id'], border)}<div>"
                f"<b>{score}</b>{' · exact copy' if p.get('exact') else ''}"
                f"{' · distinct: far above the runner-up' if p.get('distinct') else ''}"
                f"{'<br>' + ' · '.join(parts) if parts else ''}"
                f"<br>test: {html.escape(p['downstream_id'])}<br>upstream: "
                f"{html.escape(p['upstream_id'])}<br>{badge}"
                f"{'<br>your mark: ' + mark if mark else ''}</div></div>")

    def _row(self, p: dict[str, Any]) -> W.Widget:
        key = _key(p["downstream_id"], p["upstream_id"])
        toggle = W.ToggleButtons(options=list(MARKS), value=self.marks.get(key),
                                 style={"button_width": "auto"})
        toggle.observe(lambda ch, k=key: self._on_mark(k, ch["new"]), names="value")
        return W.HBox([W.HTML(self._pair_html(p)), toggle],
                      layout=W.Layout(align_items="center", justify_content="space-between",
                                      border="1px solid #eee", padding="3px"))

    @guarded
    def _on_mark(self, key: str, value: str | None) -> None:
        self.mark(*key.split(" | ", 1), value)

    def mark(self, downstream_id: str, upstream_id: str, value: str | None) -> None:
        """Mark a pair as a true duplicate / false positive (None clears); saved at once."""
        if value is not None and value not in MARKS:
            raise ValueError(f"unknown mark {value!r}; use one of {', '.join(MARKS)}")
        key = _key(downstream_id, upstream_id)
        if value is None:
            self.marks.pop(key, None)
        else:
            self.marks[key] = value
        if self.path is not None:
            save_labels(self.path, FORMAT, self.marks)
        self.counts.value = self._counts_html()
        for row, p in zip(self.list.children, self.page_pairs(), strict=False):
            if _key(p["downstream_id"], p["upstream_id"]) == key:
                row.children[0].value = self._pair_html(p)

    def static_html(self) -> str:
        rows = "".join(f'<div style="border:1px solid #eee;padding:3px">{self._pair_html(p)}</div>'
                       for p in self.page_pairs())
        body = self._counts_html() + figure_html(self._figure())
        if self.sweep is not None:
            picks = [r for r in self.sweep if round(r["threshold"] * 200) % 10 == 0]
            body += table(["threshold", "pairs", "found", "look-alikes", "false positives",
                           "precision", "recall"],
                          [(f"{r['threshold']:.2f}", r["predicted"], r["true_positives"],
                            r["look_alikes"], r["false_positives"], pct(r["precision"]),
                            pct(r["recall"])) for r in picks])
        return section(f"Near-duplicates (static copy, view: {self.view.value})", body + rows)
