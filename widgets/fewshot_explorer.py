"""FewShotExplorer: what a k-shot training set looks like, and how accuracy grows with k.

The paper's few-shot results (section 3.5, Figures 2 and 5) train on k examples per class, over several
random subsets, and report the median. With k = 1 a "dataset" is one picture per class, and which
picture was drawn matters a lot: that is the spread over seeds. Pick k and a seed to see the very
images a run would train on (balanced, seeded and nested: ``bitkit.data.fewshot``), next to the
accuracy-vs-k curve with the spread over seeds from a linear few-shot sweep
(``bitkit.linear_eval.FewShotResult``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from bitkit.data.fewshot import kshot_indices
from bitkit.hyperrule import hyperrule
from bitkit.linear_eval import FewShotResult
from widgets._common import Panel, figure_html, first, guarded, heading, img_tag, section, table


class FewShotExplorer(Panel):
    """Pick k and a seed; see the sampled images per class and the accuracy-vs-k curve.

    ``dataset``: the training split the subsets are drawn from (needs ``targets`` or
    ``labels()``, and ``class_names``). ``result``: a :class:`FewShotResult` for the curve
    (optional); its shots and seeds become the choices, else ``shots``/``seeds``.
    """

    title = "few-shot subsets"

    def __init__(self, dataset: Any, result: FewShotResult | None = None, *,
                 shots: Sequence[int] = (1, 5, 10, 25), seeds: Sequence[int] = (0, 1, 2, 3, 4),
                 classes_per_page: int = 10, max_per_class: int = 10, thumb: int = 56) -> None:
        super().__init__()
        self.dataset, self.result = dataset, result
        self.labels = np.asarray(dataset.targets if hasattr(dataset, "targets")
                                 else dataset.labels(np.arange(len(dataset))))
        if self.labels.ndim != 1:
            raise ValueError("few-shot subsets need one label per example; this dataset is "
                             "multi-label")
        self.class_names = list(getattr(dataset, "class_names", None) or
                                [str(i) for i in range(int(self.labels.max()) + 1)])
        if result is not None:
            shots = result.shots
            seeds = sorted({s for _, s in result.accuracies})
        if not shots or not seeds:
            raise ValueError("need at least one k (shots) and one seed")
        self.max_per_class, self.thumb, self.classes_per_page = max_per_class, thumb, classes_per_page
        n_cls = len(self.class_names)
        pages = [(f"classes {lo + 1}–{min(n_cls, lo + classes_per_page)} of {n_cls}", lo)
                 for lo in range(0, n_cls, classes_per_page)]
        self.k = W.SelectionSlider(options=sorted(set(shots)), description="k (per class)",
                                   style={"description_width": "90px"},
                                   layout=W.Layout(width="360px"))
        self.seed = W.Dropdown(options=sorted(set(seeds)), description="seed",
                               style={"description_width": "50px"}, layout=W.Layout(width="140px"))
        self.class_page = W.Dropdown(options=pages, value=0, layout=W.Layout(width="220px"))
        self.info = W.HTML()
        self.grid = W.HTML()
        self.figure = go.FigureWidget(self._curve_figure()) if result is not None else None
        self.figures = [self.figure] if self.figure is not None else []
        for wdg in (self.k, self.seed, self.class_page):
            wdg.observe(self._on_change, names="value")
        parts: list[W.Widget] = [
            heading("Few-shot subsets", "paper 3.5: k examples per class, several seeds"),
            W.HBox([self.k, self.seed, self.class_page]), self.status, self.info]
        if self.figure is not None:
            parts.append(self.figure)
        parts.append(self.grid)
        self._root = W.VBox(parts, layout=W.Layout(max_width="1100px"))
        self.update()

    @guarded
    def _on_change(self, change: dict[str, Any]) -> None:
        self.update()

    def indices(self) -> np.ndarray:
        """Indices of the current k-shot subset (``kshot_indices``: balanced, seeded, nested)."""
        return kshot_indices(self.labels, int(self.k.value), int(self.seed.value),
                             num_classes=len(self.class_names), class_names=self.class_names)

    @guarded
    def update(self) -> None:
        idx = self.indices()
        self.info.value = self._info_html(len(idx))
        self.grid.value = self._grid_html(idx)
        if self.figure is not None:
            self._mark(self.figure)

    def _info_html(self, n: int) -> str:
        k, seed = int(self.k.value), int(self.seed.value)
        lines = [f"<b>{k}-shot</b>, seed {seed}: {n:,} training images "
                 f"({k} x {len(self.class_names)} classes)"]
        card = getattr(self.dataset, "card", None)
        if card is not None and getattr(card, "image_size", None):
            rule = hyperrule(card, train_size=n)
            sched = next(d.value for d in rule.decisions if d.name == "schedule")
            lines.append(f"BiT-HyperRule for this subset: {html.escape(sched)}; MixUp "
                         f"{'off' if rule.mixup_alpha == 0 else rule.mixup_alpha}")
        if self.result is not None:
            acc = self.result.accuracies.get((k, seed))
            med = self.result.median(k)
            lines.append(f"linear few-shot accuracy: this seed {100 * acc:.1f}% · median over "
                         f"seeds {100 * med:.1f}%" if acc is not None
                         else f"median over seeds {100 * med:.1f}%")
        return '<div style="font-size:13px">' + "<br>".join(lines) + "</div>"

    def _grid_html(self, idx: np.ndarray) -> str:
        lo = int(self.class_page.value)
        by_class = self.labels[idx]
        rows = []
        for c in range(lo, min(len(self.class_names), lo + self.classes_per_page)):
            members = idx[by_class == c]
            shown = members[:self.max_per_class]
            images = "".join(img_tag(first(self.dataset[int(i)]), self.thumb,
                                     title=f"example {int(i)}") for i in shown)
            more = (f'<span style="color:#777;font-size:12px">+{members.size - shown.size} more'
                    "</span>" if members.size > shown.size else "")
            rows.append(f'<div style="display:flex;align-items:center;gap:4px;margin:2px 0">'
                        f'<div style="width:150px;font-size:12px;overflow:hidden;'
                        f'text-overflow:ellipsis;white-space:nowrap" '
                        f'title="{html.escape(self.class_names[c])}">'
                        f"{html.escape(self.class_names[c])}</div>{images}{more}</div>")
        return "".join(rows)

    def _curve_figure(self) -> go.Figure:
        assert self.result is not None
        rows = self.result.rows()
        ks = [r["shots"] for r in rows]
        fig = go.Figure()
        fig.add_scatter(x=ks + ks[::-1], y=[100 * r["max"] for r in rows]
                        + [100 * r["min"] for r in rows][::-1], fill="toself",
                        fillcolor="rgba(31,119,180,0.15)", line=dict(width=0), hoverinfo="skip",
                        name="min–max over seeds")
        seeds_x = [r["shots"] for r in rows for _ in r["accuracies"]]
        seeds_y = [100 * a for r in rows for a in r["accuracies"]]
        fig.add_scatter(x=seeds_x, y=seeds_y, mode="markers", name="each seed",
                        marker=dict(size=5, color="rgba(31,119,180,0.5)"))
        fig.add_scatter(x=ks, y=[100 * r["median"] for r in rows], mode="lines+markers",
                        name="median", line=dict(width=3, color="#1f77b4"))
        fig.add_scatter(x=[], y=[], mode="markers", name="this k and seed",
                        marker=dict(size=14, symbol="circle-open", color="#d62728",
                                    line=dict(width=3)))
        fig.update_layout(
            title=f"Linear few-shot accuracy vs k ({len(rows[0]['accuracies'])} seeds)",
            xaxis=dict(title="examples per class (k)", type="log", tickvals=ks),
            yaxis=dict(title="test accuracy (%)", rangemode="tozero"), height=330,
            margin=dict(l=60, r=20, t=50, b=45), legend=dict(orientation="h", y=-0.25))
        return fig

    def _mark(self, fig: go.Figure) -> None:
        assert self.result is not None
        k, seed = int(self.k.value), int(self.seed.value)
        acc = self.result.accuracies.get((k, seed))
        with fig.batch_update():
            fig.data[3].x, fig.data[3].y = ([k], [100 * acc]) if acc is not None else ([], [])

    def static_html(self) -> str:
        idx = self.indices()
        body = self._info_html(len(idx))
        if self.result is not None:
            fig = self._curve_figure()
            self._mark(fig)
            body += figure_html(fig) + table(
                ["k", "examples", "median", "min", "max", "seeds"],
                [(r["shots"], r["examples"], f"{100 * r['median']:.1f}%",
                  f"{100 * r['min']:.1f}%", f"{100 * r['max']:.1f}%", r["seeds"])
                 for r in self.result.rows()])
        return section("Few-shot subsets (static copy)", body + self._grid_html(idx))
