"""ErrorBrowser: every mistake of a model, filterable, sortable, and reviewable by a human.

Supplementary C shows *all* of BiT-L's mistakes on Pets and Flowers, and Figure 7 (left) has
five human raters say, for each CIFAR-10 mistake, whether they agree with the model, with the
label, or with neither. About half of the "mistakes" turn out to be ambiguity or label noise.
This panel lets a student do that review on their own model: a grid of mistakes (image,
prediction vs label, top-5 bars), filters by true or predicted class, a confusion heatmap whose
cells filter the grid when clicked, and one of four verdicts per mistake, saved to a JSON file
and loaded again the next time the panel opens on it.

On a test set with planted label errors (``bitkit.data.world.label_errors``, e.g.
``world-objects-noisy``) the panel also scores the review against the ground truth: how many
"model right" verdicts were right, how many planted label errors were found and how many
remain (:meth:`ErrorBrowser.review_score`). Real data has no such truth; the panel then only
counts verdicts. The cards never show which labels are planted: that would give the answer away.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from bitkit.evaluate import Report, example_ids
from widgets._common import (
    Panel,
    figure_html,
    first,
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

#: The verdicts of Figure 7 (left): raters agree with the model (green), with the label (red),
#: are unsure, or think both are wrong (yellow in the paper).
VERDICTS = ("model right", "label right", "unsure", "both wrong")
COLOURS = {"model right": "#2e7d32", "label right": "#c62828", "unsure": "#f9a825",
           "both wrong": "#8d6e63"}
FORMAT = "bitkit.mistake-review/1"
SORTS = {
    "highest loss first": ("loss", True),
    "most confident first": ("confidence", True),
    "least confident first": ("confidence", False),
    "dataset order": ("index", False),
}
UNREVIEWED = "not reviewed yet"
#: Below this many reviewed mistakes the summary gives counts only: "100% after one verdict"
#: says nothing about a dataset.
MIN_REVIEWS_FOR_RATES = 10
ANY = -1


def _check_report(report: Report) -> None:
    if not isinstance(report, Report):
        raise TypeError(f"ErrorBrowser needs a bitkit.evaluate.Report (from predict); got "
                        f"{type(report).__name__}")
    names = report.class_names
    needed = int(report.topk.max()) + 1 if report.topk.size else 0
    if not names or len(names) < needed:
        raise ValueError(
            f"this Report has {len(names or [])} class names but predicts class ids up to "
            f"{needed - 1}: pass class_names=[...] to predict() or report_from_logits(), or use a "
            "dataset with class_names")


def _truth_by_id(report: Report, label_errors: Sequence[Any] | None) -> dict[str, Any] | None:
    """The planted label errors among the report's examples, by example id; checks that each
    one's ``given_label`` is the label the report scored against (the same test set)."""
    if label_errors is None:
        return None
    position = {str(i): k for k, i in enumerate(report.ids)}
    truth = {}
    for e in label_errors:
        missing = [a for a in ("example_id", "true_label", "given_label") if not hasattr(e, a)]
        if missing:
            raise TypeError(f"label_errors takes bitkit.data.world.LabelError items (from "
                            f"label_errors(test_set)); got {type(e).__name__} without "
                            f"{', '.join(missing)}")
        k = position.get(str(e.example_id))
        if k is None:
            continue  # an example this report did not score (a smaller test_size)
        if int(report.label[k]) != int(e.given_label):
            raise ValueError(
                f"label_errors do not match the report: {e.example_id} has label "
                f"{int(report.label[k])} in the report but given_label {e.given_label} in the "
                "ground truth; pass the label errors of the test set predict() ran on")
        truth[str(e.example_id)] = e
    return truth


def _check_images(report: Report, images: Any) -> None:
    if images is None:
        return
    if len(images) != len(report):
        raise ValueError(f"images has {len(images)} examples but the report has {len(report)}: "
                         "pass the same (unshuffled) test set that predict() ran on")
    if hasattr(images, "__getitem__") and (callable(getattr(images, "example_id", None))
                                           or getattr(images, "ids", None) is not None):
        ids = example_ids(images)
        bad = np.nonzero(ids != report.ids.astype(str))[0]
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"images do not match the report: example {i} is {ids[i]!r} in the "
                             f"images but {report.ids[i]!r} in the report ({bad.size} differ)")


class ErrorBrowser(Panel):
    """Browse and review the top-1 mistakes of a :class:`~bitkit.evaluate.Report`.

    ``images``: the dataset ``predict`` ran on (same order), to show each mistake's picture.
    ``annotations``: the JSON file the verdicts are saved to after every click and read from
    when the panel opens (``None``: keep them in memory only).
    ``label_errors``: the ground truth of planted label errors
    (``bitkit.data.world.label_errors(test_set)``); ``None`` (real data): no truth to score
    the review against. ``[]`` means the labels are known to be exact.
    """

    title = "mistakes"

    def __init__(self, report: Report, images: Any = None, *,
                 annotations: str | Path | None = "mistakes_review.json", page_size: int = 12,
                 max_heatmap_classes: int = 30, thumb: int = 96,
                 label_errors: Sequence[Any] | None = None) -> None:
        super().__init__()
        _check_report(report)
        _check_images(report, images)
        self.truth = _truth_by_id(report, label_errors)
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.report, self.images, self.page_size, self.thumb = report, images, page_size, thumb
        self.path = None if annotations is None else Path(annotations)
        self.labels: dict[str, str] = ({} if self.path is None
                                       else load_labels(self.path, FORMAT, VERDICTS))
        self.page = 0
        self.rows: list[dict[str, Any]] = []
        self._images_cache: dict[int, str] = {}

        names = report.class_names
        self.heat_classes = self._heatmap_classes(max_heatmap_classes)
        self._label_of = self._unique_labels(names)
        # ipywidgets shows a None value as an empty box, so "any class" is ANY (-1).
        class_options = [("any class", ANY)] + [(self._label_of[i], i) for i in range(len(names))]
        self.true_filter = W.Dropdown(options=class_options, value=ANY, description="True class",
                                      style={"description_width": "90px"})
        self.pred_filter = W.Dropdown(options=class_options, value=ANY, description="Predicted",
                                      style={"description_width": "90px"})
        self.sort = W.Dropdown(options=list(SORTS), value="highest loss first",
                               description="Sort", style={"description_width": "90px"})
        self.review_filter = W.Dropdown(options=["all", UNREVIEWED, *VERDICTS], value="all",
                                        description="Review", style={"description_width": "90px"})
        self.clear_button = W.Button(description="Clear filters", icon="times")
        self.prev_button = W.Button(description="◀ Prev", layout=W.Layout(width="90px"))
        self.next_button = W.Button(description="Next ▶", layout=W.Layout(width="90px"))
        self.page_label = W.HTML()
        self.summary = W.HTML()
        self.grid = W.GridBox(layout=W.Layout(
            grid_template_columns=f"repeat(auto-fill, minmax({thumb + 190}px, 1fr))",
            grid_gap="8px", width="100%"))
        self.figure = go.FigureWidget(self._heatmap_figure())
        self.figures = [self.figure]
        self.figure.data[0].on_click(self._on_heatmap_click)

        for wdg in (self.true_filter, self.pred_filter, self.sort, self.review_filter):
            wdg.observe(self._on_filter, names="value")
        self.clear_button.on_click(self._on_clear)
        self.prev_button.on_click(lambda _b: self._turn(-1))
        self.next_button.on_click(lambda _b: self._turn(+1))
        filters = W.VBox([W.HBox([self.true_filter, self.pred_filter]),
                          W.HBox([self.sort, self.review_filter, self.clear_button])])
        self._root = W.VBox([
            heading("Mistakes", "supplementary C / Fig. 7: review what the model gets wrong"),
            # the heatmap right above the filters and the grid: a click on a cell shows its
            # mistakes just below, in view
            self.summary, self.figure, filters, self.status,
            W.HBox([self.prev_button, self.page_label, self.next_button],
                   layout=W.Layout(align_items="center")),
            self.grid,
        ], layout=W.Layout(max_width="1100px"))
        self.refresh()

    # -- classes and the heatmap -------------------------------------------------------------

    @staticmethod
    def _unique_labels(names: list[str]) -> list[str]:
        counts = Counter(names)
        return [n if counts[n] == 1 else f"{n} (#{i})" for i, n in enumerate(names)]

    def _heatmap_classes(self, limit: int) -> list[int]:
        c = self.report.num_classes
        if c <= limit:
            return list(range(c))
        keep: list[int] = []
        for cell in self.report.most_confused(n=c * c):
            for k in (cell["true"], cell["predicted"]):
                if k not in keep and len(keep) < limit:
                    keep.append(k)
        return sorted(keep) or list(range(limit))

    def _heatmap_figure(self) -> go.Figure:
        cls = self.heat_classes
        cm = self.report.confusion_matrix()[np.ix_(cls, cls)].astype(float)
        correct = np.diag(cm).copy()
        np.fill_diagonal(cm, np.nan)  # blank diagonal: the colour scale is for mistakes only
        labels = [self._label_of[i] for i in cls]
        custom = np.broadcast_to(correct[:, None], cm.shape)
        note = ("" if len(cls) == self.report.num_classes
                else f" ({len(cls)} most-confused of {self.report.num_classes} classes)")
        # JSON has no NaN: the blank diagonal travels to the browser as null.
        z = [[None if np.isnan(v) else v for v in row] for row in cm.tolist()]
        fig = go.Figure(go.Heatmap(
            z=z, x=labels, y=labels, colorscale="Reds", zmin=0, customdata=custom,
            texttemplate="%{z}",
            hoverongaps=False, colorbar=dict(title="mistakes"),
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z} mistakes<br>"
                          "(%{customdata} of this class right)<extra></extra>"))
        fig.update_layout(
            title=f"Confusion of mistakes{note}: click a cell to show its mistakes",
            xaxis_title="predicted class", yaxis_title="true class",
            yaxis_autorange="reversed", height=max(360, 26 * len(cls) + 160),
            margin=dict(l=110, r=20, t=60, b=110))
        return fig

    @guarded
    def _on_heatmap_click(self, trace: Any, points: Any, state: Any) -> None:
        if not points.xs:
            return
        by_label = {label: i for i, label in enumerate(self._label_of)}
        true, pred = by_label[points.ys[0]], by_label[points.xs[0]]
        self.select(true=true, predicted=pred)

    # -- filters and paging ------------------------------------------------------------------

    def select(self, *, true: int | None, predicted: int | None) -> None:
        """Show the mistakes of one confusion cell (what a heatmap click does)."""
        with self.grid.hold_sync():
            self._batch = True
            try:
                self.true_filter.value = ANY if true is None else true
                self.pred_filter.value = ANY if predicted is None else predicted
            finally:
                self._batch = False
        self.page = 0
        self.refresh()

    _batch = False

    @guarded
    def _on_filter(self, change: dict[str, Any]) -> None:
        if self._batch:
            return
        self.page = 0
        self.refresh()

    @guarded
    def _on_clear(self, _button: W.Button) -> None:
        self._batch = True
        try:
            self.true_filter.value = ANY
            self.pred_filter.value = ANY
            self.review_filter.value = "all"
        finally:
            self._batch = False
        self.page = 0
        self.refresh()

    @guarded
    def _turn(self, delta: int) -> None:
        pages = max(1, -(-len(self.rows) // self.page_size))
        self.page = min(max(0, self.page + delta), pages - 1)
        self._show_page()

    def current_rows(self) -> list[dict[str, Any]]:
        """The mistakes that match the filters, in the chosen order."""
        sort_by, descending = SORTS[self.sort.value]
        true, pred = self.true_filter.value, self.pred_filter.value
        rows = self.report.mistakes(true=None if true == ANY else true,
                                    predicted=None if pred == ANY else pred,
                                    sort_by=sort_by, descending=descending)
        want = self.review_filter.value
        if want == UNREVIEWED:
            rows = [r for r in rows if r["id"] not in self.labels]
        elif want != "all":
            rows = [r for r in rows if self.labels.get(r["id"]) == want]
        return rows

    @guarded
    def refresh(self) -> None:
        """Recompute the filtered list and redraw the summary and the current page."""
        self.rows = self.current_rows()
        self.summary.value = self._summary_html()
        self._show_page()

    def page_rows(self) -> list[dict[str, Any]]:
        lo = self.page * self.page_size
        return self.rows[lo:lo + self.page_size]

    def _show_page(self) -> None:
        n = len(self.rows)
        pages = max(1, -(-n // self.page_size))
        lo = self.page * self.page_size
        self.page_label.value = (f"&nbsp;mistakes {lo + 1 if n else 0}–{min(n, lo + self.page_size)}"
                                 f" of {n} (page {self.page + 1}/{pages})&nbsp;")
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= pages - 1
        self.grid.children = [self._card(r) for r in self.page_rows()]

    # -- one mistake -------------------------------------------------------------------------

    def _image_html(self, i: int, border: str) -> str:
        if self.images is None:
            return placeholder(self.thumb, "no images given")
        key = i
        if key not in self._images_cache:
            self._images_cache[key] = img_tag(first(self.images[i]), self.thumb,
                                              title=str(self.report.ids[i]))
        return self._images_cache[key].replace("border:2px solid #ccc", f"border:3px solid {border}")

    def _bars(self, i: int) -> str:
        r = self.report
        out = []
        for cls, p in zip(r.topk[i][:5], r.topk_prob[i][:5], strict=True):
            right = cls == r.label[i]
            colour = "#2e7d32" if right else "#90a4ae"
            name = html.escape(self._label_of[int(cls)])
            # the name gets a line of its own (wrapping, never cut), the bar the line below
            out.append(
                f'<div style="font-size:11px;line-height:13px;margin-bottom:2px">'
                f'<div style="display:flex;justify-content:space-between;gap:4px">'
                f'<span style="overflow-wrap:anywhere">{"<b>" if right else ""}{name}'
                f'{"</b>" if right else ""}</span><span>{100 * float(p):.0f}%</span></div>'
                f'<div style="background:#eee;height:9px">'
                f'<span style="display:block;height:9px;width:{100 * float(p):.1f}%;'
                f'background:{colour}"></span></div></div>')
        return "".join(out)

    def _card_html(self, row: dict[str, Any]) -> str:
        verdict = self.labels.get(row["id"])
        border = COLOURS.get(verdict or "", "#ccc")
        true = html.escape(self._label_of[row["true"]] if row["true"] >= 0 else "(no label)")
        pred = html.escape(self._label_of[row["predicted"]])
        return (
            f'<div style="display:flex;gap:6px;font-size:12px">'
            f'<div>{self._image_html(row["index"], border)}</div><div style="flex:1;min-width:0">'
            f'<div>predicted <b style="color:#c62828">{pred}</b> '
            f'{100 * row["confidence"]:.0f}%</div><div>label <b>{true}</b></div>'
            f'<div style="color:#666">loss {row["loss"]:.2f} · '
            f'<span title="example id">{html.escape(row["id"])}</span></div></div></div>'
            f'<div style="margin-top:3px">{self._bars(row["index"])}</div>')

    def _card(self, row: dict[str, Any]) -> W.Widget:
        verdict = W.ToggleButtons(options=list(VERDICTS), value=self.labels.get(row["id"]),
                                  style={"button_width": "auto"},
                                  tooltips=["raters agree with the prediction",
                                            "raters agree with the label",
                                            "raters cannot tell", "neither is right"])
        verdict.observe(lambda ch, example_id=row["id"]: self._on_verdict(example_id, ch["new"]),
                        names="value")
        return W.VBox([W.HTML(self._card_html(row)), verdict],
                      layout=W.Layout(border="1px solid #ddd", padding="4px"))

    @guarded
    def _on_verdict(self, example_id: str, verdict: str | None) -> None:
        self.annotate(example_id, verdict)

    def annotate(self, example_id: str, verdict: str | None) -> None:
        """Record a verdict (None removes it) and save the review file at once."""
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}; use one of {', '.join(VERDICTS)}")
        if verdict is None:
            self.labels.pop(example_id, None)
        else:
            self.labels[example_id] = verdict
        if self.path is not None:
            save_labels(self.path, FORMAT, self.labels, report=dict(self.report.meta))
        self.summary.value = self._summary_html()
        index = next((k for k, r in enumerate(self.page_rows()) if r["id"] == example_id), None)
        if index is not None:  # recolour the image border of that card
            self.grid.children[index].children[0].value = self._card_html(self.page_rows()[index])

    # -- summaries ---------------------------------------------------------------------------

    def review_counts(self) -> dict[str, int]:
        """Verdicts over this report's mistakes (reviews of other examples in the file are
        kept but not counted)."""
        mistakes = set(self.report.ids[~self.report.correct(1)].astype(str))
        counts = Counter(v for k, v in self.labels.items() if k in mistakes)
        return {v: counts.get(v, 0) for v in VERDICTS}

    def review_score(self) -> dict[str, int] | None:
        """The review scored against the planted label errors; ``None`` without ground truth.

        ``planted``: label errors among the report's examples; ``in_mistakes``: those the
        browser lists (the prediction differs from the given label); ``hidden``: the others
        (the model predicts the wrong label too: no review of the mistakes can find them);
        ``reviewed``: planted errors among the mistakes with any verdict; ``found``: marked
        "model right" or "both wrong" (the label is wrong); ``remaining``: ``in_mistakes -
        found``; ``model_right``: "model right" verdicts; ``model_right_correct``: those where
        the label is a planted error and the model predicts the true class; ``false_alarms``:
        "model right" or "both wrong" verdicts on labels that are not planted errors."""
        if self.truth is None:
            return None
        r = self.report
        mistakes = set(r.ids[~r.correct(1)].astype(str))
        predicted = dict(zip(r.ids.astype(str), r.predicted.tolist(), strict=True))
        wrong_label = ("model right", "both wrong")
        verdicts = {k: v for k, v in self.labels.items() if k in mistakes}
        planted_mistakes = [k for k in self.truth if k in mistakes]
        found = sum(verdicts.get(k) in wrong_label for k in planted_mistakes)
        model_right = [k for k, v in verdicts.items() if v == "model right"]
        return {
            "planted": len(self.truth), "in_mistakes": len(planted_mistakes),
            "hidden": len(self.truth) - len(planted_mistakes),
            "reviewed": sum(k in verdicts for k in planted_mistakes),
            "found": found, "remaining": len(planted_mistakes) - found,
            "model_right": len(model_right),
            "model_right_correct": sum(k in self.truth and predicted[k] ==
                                       self.truth[k].true_label for k in model_right),
            "false_alarms": sum(v in wrong_label and k not in self.truth
                                for k, v in verdicts.items()),
        }

    def _score_html(self) -> str:
        s = self.review_score()
        if s is None:
            return ""
        if not s["planted"]:
            return ("ground truth: no label in this test set is wrong, so every \"model right\" "
                    f"or \"both wrong\" verdict is a false alarm ({s['false_alarms']} so far)")
        hidden = (f"; {s['hidden']} more {'hides' if s['hidden'] == 1 else 'hide'} where the "
                  "model predicts the wrong label too "
                  "(not mistakes, so no review of the mistakes finds them)" if s["hidden"] else "")
        verdicts = (f"your \"model right\" verdicts were right {s['model_right_correct']} of "
                    f"{s['model_right']} times (label planted wrong, model predicts the true "
                    "class)" if s["model_right"] else "no \"model right\" verdicts yet")
        return (f"<b>ground truth</b> ({s['planted']} planted label errors): {verdicts}; you found "
                f"<b>{s['found']} of the {s['in_mistakes']}</b> planted label errors among the "
                f"mistakes (marked \"model right\" or \"both wrong\"), <b>{s['remaining']} "
                f"remain</b>{hidden}; false alarms: {s['false_alarms']}")

    def _summary_html(self) -> str:
        r = self.report
        n_mistakes = int((~r.correct(1)).sum())
        counts = self.review_counts()
        reviewed = sum(counts.values())
        parts = [f"{len(r):,} examples · top-1 {pct(r.top1)} · <b>{n_mistakes:,} mistakes</b>"]
        if reviewed:
            chips = " ".join(
                f'<span style="color:{COLOURS[v]};font-weight:600">{v}: {c}</span>'
                for v, c in counts.items())
            right = counts["label right"]
            not_label = reviewed - right
            rates = (f" ({pct(right / reviewed)} and {pct(not_label / reviewed)})"
                     if reviewed >= MIN_REVIEWS_FOR_RATES else
                     f" (review at least {MIN_REVIEWS_FOR_RATES} for a rate)")
            parts.append(
                f"reviewed {reviewed}/{n_mistakes}: {chips} · the label is clearly right for "
                f"{right} of {reviewed} reviewed mistakes; {not_label} of {reviewed} are ambiguity "
                f"or label noise{rates} (paper, supplementary C: about half on "
                "CIFAR-10; the label was clearly right for only 19.21% of ILSVRC-2012 mistakes)")
        score = self._score_html()
        if score:
            parts.append(score)
        where = f" · saved to {html.escape(str(self.path))}" if self.path else " · not saved"
        return f'<div style="font-size:13px">{"<br>".join(parts)}{where}</div>'

    def static_html(self) -> str:
        top = self.report.most_confused(n=10)
        confused = table(["true", "predicted", "count"],
                         [(c["true_name"], c["predicted_name"], c["count"]) for c in top])
        cards = "".join(
            f'<div style="border:1px solid #ddd;padding:4px;width:{self.thumb + 150}px">'
            f"{self._card_html(row)}<div style='font-size:11px;color:#555'>review: "
            f"{html.escape(self.labels.get(row['id'], 'not reviewed'))}</div></div>"
            for row in self.page_rows())
        grid = f'<div style="display:flex;flex-wrap:wrap;gap:8px">{cards}</div>'
        n = len(self.rows)
        return section("Mistakes (static copy of the error browser)",
                       self._summary_html()
                       + section(f"{min(n, self.page_size)} of {n} mistakes "
                                 f"({self.sort.value})", grid)
                       + section("Most confused classes", confused)
                       + figure_html(self._heatmap_figure()))
