"""DuplicateInspector: near-duplicates between upstream training data and a test set.

Supplementary B asks whether test images (or near copies) were in the upstream training data,
and removes them for the "Dedup" columns of its Table 1; Fig. 2 there shows detected pairs with
green (true positive) and red (false positive) borders. Whether a pair is a duplicate depends on
a similarity threshold that the paper does not state. This panel makes the choice visible: a
threshold slider with live counts, the pairs themselves with both images, your own true/false
marks (saved to a file), and precision/recall against ground truth when it is known (the planted
pairs of the embedded world: ``bitkit.data.world.pairs``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from bitkit.dedup import DuplicateReport, _pair_key
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
        self.truth = None if ground_truth is None else {_pair_key(p) for p in ground_truth}
        self._down = ImageLookup(downstream) if downstream is not None else None
        self._up = ImageLookup(upstream) if upstream is not None else None
        self.path = None if marks is None else Path(marks)
        self.marks: dict[str, str] = {} if self.path is None else load_labels(self.path, FORMAT,
                                                                              MARKS)
        self.page = 0
        self.pairs: list[dict[str, Any]] = []
        self.sweep = (report.sweep(self.truth, np.round(np.arange(0.5, 1.0001, 0.005), 4))
                      if self.truth is not None else None)
        finite = report.similarity[np.isfinite(report.similarity)]
        lo = float(np.floor(min(finite.min(), report.threshold) * 100) / 100) if finite.size else 0.5
        self.threshold = W.FloatSlider(value=report.threshold, min=min(lo, 0.99), max=1.0,
                                       step=0.005, readout_format=".3f",
                                       description="Threshold", continuous_update=True,
                                       style={"description_width": "80px"},
                                       layout=W.Layout(width="460px"))
        self.counts = W.HTML()
        self.prev_button = W.Button(description="◀ Prev", layout=W.Layout(width="90px"))
        self.next_button = W.Button(description="Next ▶", layout=W.Layout(width="90px"))
        self.page_label = W.HTML()
        self.list = W.VBox()
        self.figure = go.FigureWidget(self._figure())
        self.figures = [self.figure]
        self.threshold.observe(self._on_threshold, names="value")
        self.prev_button.on_click(lambda _b: self._turn(-1))
        self.next_button.on_click(lambda _b: self._turn(+1))
        self._root = W.VBox([
            heading("Near-duplicates", "supplementary B: test images with an upstream copy"),
            self.threshold, self.counts, self.status, self.figure,
            W.HBox([self.prev_button, self.page_label, self.next_button],
                   layout=W.Layout(align_items="center")),
            self.list,
        ], layout=W.Layout(max_width="1100px"))
        self.update()

    # -- numbers -------------------------------------------------------------------------------

    def stats(self, threshold: float | None = None) -> dict[str, Any]:
        """Counts at a threshold; precision/recall when ground truth is known; your marks."""
        t = self.threshold.value if threshold is None else threshold
        pairs = self.report.pairs(t)
        keys = {(p["downstream_id"], p["upstream_id"]) for p in pairs}
        out: dict[str, Any] = {"threshold": t, "pairs": len(pairs),
                               "test_images": len({p["downstream_id"] for p in pairs}),
                               "exact": sum(p["exact"] for p in pairs)}
        if self.truth is not None:
            tp = len(keys & self.truth)
            out.update(true_positives=tp, precision=tp / len(keys) if keys else None,
                       recall=tp / len(self.truth) if self.truth else None)
        marked = [self.marks.get(_key(*k)) for k in keys]
        out["marked_true"] = marked.count("true duplicate")
        out["marked_false"] = marked.count("false positive")
        return out

    def _counts_html(self) -> str:
        s = self.stats()
        parts = [f"<b>{s['pairs']}</b> pairs at cosine ≥ {s['threshold']:.3f} · "
                 f"<b>{s['test_images']}</b> test images have an upstream duplicate "
                 f"({s['exact']} byte-identical)"]
        if self.truth is not None:
            parts.append(f"against {len(self.truth)} known pairs: precision "
                         f"<b>{pct(s['precision'])}</b> · recall <b>{pct(s['recall'])}</b>")
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
            for key, colour in (("precision", "#1f77b4"), ("recall", "#ff7f0e"), ("f1", "#2ca02c")):
                fig.add_scatter(x=t, y=[None if r[key] is None else 100 * r[key]
                                        for r in self.sweep], name=key, mode="lines",
                                line=dict(color=colour, width=2.5))
            fig.update_layout(title="Precision and recall against the known pairs",
                              yaxis_title="%")
        else:
            top1 = self.report.similarity[:, 0]
            fig.add_histogram(x=top1[np.isfinite(top1)], nbinsx=60, name="test images",
                              marker_color="#1f77b4")
            fig.update_layout(title="Similarity of each test image to its nearest upstream image",
                              yaxis_title="test images")
        fig.update_layout(xaxis_title="cosine similarity threshold", height=300,
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
        self.pairs = self.report.pairs(self.threshold.value)
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
        known = None if self.truth is None else key in self.truth
        border = {"true duplicate": "#2e7d32", "false positive": "#c62828"}.get(
            mark or "", "#2e7d32" if known else "#c62828" if known is False else "#ccc")
        badge = ("" if known is None else
                 '<span style="color:#2e7d32">known pair</span>' if known else
                 '<span style="color:#c62828">not a known pair</span>')
        return (f'<div style="display:flex;gap:8px;align-items:center;font-size:12px">'
                f"{self._picture(self._down, p['downstream_id'], border)}"
                f"{self._picture(self._up, p['upstream_id'], border)}<div>"
                f"<b>cosine {p['similarity']:.4f}</b>{' · exact copy' if p['exact'] else ''}"
                f"<br>test: {html.escape(p['downstream_id'])}<br>upstream: "
                f"{html.escape(p['upstream_id'])}<br>{badge}</div></div>")

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
            body += table(["threshold", "pairs", "precision", "recall"],
                          [(f"{r['threshold']:.2f}", r["predicted"], pct(r["precision"]),
                            pct(r["recall"])) for r in picks])
        return section("Near-duplicates (static copy)", body + rows)
