"""HyperRulePanel: move the task's facts, watch BiT-HyperRule's choices change (paper 3.3).

BiT fine-tunes every task with one rule instead of a sweep. The rule reads two facts, the number
of training examples and the image area, and sets resolution, schedule length and MixUp. This
panel makes the thresholds tangible: drag the dataset size across 20,000 and the schedule jumps
from 500 to 10,000 steps and MixUp switches on; shrink the images below 96x96 and the resolution
drops to 160/128. Every number comes from :func:`bitkit.hyperrule.hyperrule`, with its reasons.
"""

from __future__ import annotations

import html
import math
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from bitkit.data import get_card, list_cards
from bitkit.hyperrule import Recipe, hyperrule
from widgets._common import Panel, figure_html, guarded, heading, section, table

NO_CARD = "— none: enter the numbers —"


def _usable_cards() -> list[str]:
    """Cards that carry both facts the rule needs (collections and JFT have no image size)."""
    out = []
    for name in list_cards():
        try:
            card = get_card(name)
        except ValueError:  # a malformed card is reported by `bitkit cards`, not here
            continue
        if card.train_size and card.image_size:
            out.append(name)
    return out


def schedule_points(recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """(steps, lr) tracing the schedule exactly with few points: the warm-up ramp sampled
    densely (it curves on a log axis), then the two ends of every constant phase."""
    s = recipe.schedule
    steps = set(np.linspace(1, s.warmup_steps, num=min(s.warmup_steps, 60)).round().astype(int))
    for b in s.decay_steps:
        steps.update((b, b + 1))
    steps.update((max(1, s.warmup_steps), s.total_steps - 1))
    x = np.array(sorted(i for i in steps if 0 <= i < s.total_steps))
    return x, np.array([s.lr(int(i)) for i in x])


class HyperRulePanel(Panel):
    """Dataset size, image size, batch size (and a data card) -> BiT-HyperRule's recipe, live.

    ``panel.recipe`` is the current :class:`~bitkit.hyperrule.Recipe`, ready for
    ``TrainConfig.from_recipe(panel.recipe)``.
    """

    title = "BiT-HyperRule"

    def __init__(self, card: str | None = None, *, train_size: int = 10_000,
                 image_size: int | tuple[int, int] = 32, batch_size: int = 512) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.card_picker = W.Dropdown(options=[NO_CARD, *_usable_cards()], value=NO_CARD,
                                      description="Data card", style={"description_width": "110px"},
                                      layout=W.Layout(width="360px"))
        self.train_size = W.BoundedIntText(value=train_size, min=1, max=2_000_000_000,
                                           description="Training images",
                                           style={"description_width": "110px"},
                                           layout=W.Layout(width="240px"))
        self.size_slider = W.FloatLogSlider(value=max(train_size, 1), base=10, min=0, max=7,
                                            step=0.01, readout=False, description="(drag)",
                                            style={"description_width": "50px"},
                                            layout=W.Layout(width="340px"))
        self.height = W.BoundedIntText(value=h, min=1, max=100_000, description="Image H",
                                       style={"description_width": "110px"},
                                       layout=W.Layout(width="200px"))
        self.width = W.BoundedIntText(value=w, min=1, max=100_000, description="W",
                                      style={"description_width": "20px"},
                                      layout=W.Layout(width="110px"))
        self.batch_size = W.BoundedIntText(value=batch_size, min=1, max=1_000_000,
                                           description="Batch size",
                                           style={"description_width": "110px"},
                                           layout=W.Layout(width="200px"))
        self.batch_split = W.BoundedIntText(value=1, min=1, max=1_000_000,
                                            description="micro-batches",
                                            style={"description_width": "100px"},
                                            layout=W.Layout(width="200px"))
        self.rescale = W.Checkbox(value=False, description="rescale lr/steps for the batch "
                                  "(not BiT)", indent=False)
        self.log_y = W.Checkbox(value=True, description="log lr axis", indent=False)
        self.summary = W.HTML()
        self.decisions = W.HTML()
        self.figure = go.FigureWidget(layout=go.Layout(
            height=300, margin=dict(l=60, r=20, t=70, b=45),
            xaxis_title="optimizer step", yaxis_title="learning rate", showlegend=False))
        self.figures = [self.figure]
        self.recipe: Recipe = hyperrule(train_size=train_size, image_size=(h, w))
        self._syncing = False

        controls = W.VBox([
            self.card_picker,
            W.HBox([self.train_size, self.size_slider]),
            W.HBox([self.height, self.width]),
            W.HBox([self.batch_size, self.batch_split]),
            W.HBox([self.rescale, self.log_y]),
        ])
        self._root = W.VBox([
            heading("BiT-HyperRule", "paper 3.3: one rule for every downstream task"),
            controls, self.status, self.summary, self.figure, self.decisions,
        ], layout=W.Layout(max_width="980px"))

        self.card_picker.observe(self._on_card, names="value")
        self.train_size.observe(self._on_size_text, names="value")
        self.size_slider.observe(self._on_size_slider, names="value")
        for wdg in (self.height, self.width, self.batch_size, self.batch_split, self.rescale):
            wdg.observe(self._on_change, names="value")
        self.log_y.observe(self._on_change, names="value")
        if card is not None:
            self.card_picker.value = get_card(card).name
        self.update()

    # -- callbacks -------------------------------------------------------------------------

    @guarded
    def _on_card(self, change: dict[str, Any]) -> None:
        if change["new"] != NO_CARD:
            card = get_card(change["new"])
            with self.summary.hold_trait_notifications():
                self._syncing = True
                try:
                    self.train_size.value = card.train_size
                    self.size_slider.value = card.train_size
                    self.height.value, self.width.value = card.image_size
                finally:
                    self._syncing = False
        self.update()

    @guarded
    def _on_size_text(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            self.size_slider.value = max(1, change["new"])
        finally:
            self._syncing = False
        self.update()

    @guarded
    def _on_size_slider(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            self.train_size.value = max(1, int(round(change["new"])))
        finally:
            self._syncing = False
        self.update()

    @guarded
    def _on_change(self, change: dict[str, Any]) -> None:
        if not self._syncing:
            self.update()

    # -- the rule --------------------------------------------------------------------------

    def _card(self) -> Any:
        return None if self.card_picker.value == NO_CARD else get_card(self.card_picker.value)

    def compute(self) -> Recipe:
        """The recipe for the values in the controls (raises ValueError for impossible ones)."""
        return hyperrule(self._card(), train_size=self.train_size.value,
                         image_size=(self.height.value, self.width.value),
                         batch_size=self.batch_size.value, batch_split=self.batch_split.value,
                         rescale_for_batch=self.rescale.value)

    @guarded
    def update(self) -> None:
        """Recompute the recipe and redraw everything."""
        self.recipe = self.compute()
        self.summary.value = self._summary_html()
        self.decisions.value = section("Why each choice", self._decisions_table())
        self._draw(self.figure)

    def schedule_text(self) -> str:
        """The schedule line as shown (the browser test reads this)."""
        return next(d.value for d in self.recipe.decisions if d.name == "schedule")

    def _facts(self) -> list[tuple[str, str]]:
        r = self.recipe
        card = self._card()
        rows = [
            ("Resolution", f"train: resize {r.resize}, random crop {r.crop}; test: resize to "
                           f"{r.crop}"),
            ("Schedule", self.schedule_text()),
            ("MixUp", "none" if r.mixup_alpha == 0 else f"alpha = {r.mixup_alpha:g}"),
            ("Optimizer", f"SGD, momentum {r.momentum}, lr {r.schedule.base_lr:g}, "
                          "no weight decay"),
            ("Batch", f"{r.batch_size} = {r.batch_split} x {r.micro_batch_size}"),
            ("Augmentation", ", ".join(a for a, on in (("random crop", r.random_crop),
                                                       ("flip", r.flip)) if on) or "none"),
        ]
        if card is not None and card.resolution:
            rows.append(("Teaching run", f"the card trains CPU runs at resize "
                         f"{card.resolution[0]}, crop {card.resolution[1]} (not BiT's)"))
        return rows

    def _summary_html(self) -> str:
        rows = "".join(
            f'<tr><td style="padding:2px 12px 2px 0;color:#555">{html.escape(k)}</td>'
            f'<td style="padding:2px 0" class="bitkit-{k.lower().replace(" ", "-")}">'
            f"<b>{html.escape(v)}</b></td></tr>" for k, v in self._facts())
        return (f'<div style="font-size:13px">{html.escape(self.recipe.source)}</div>'
                f'<table style="font-size:14px;margin:4px 0">{rows}</table>')

    def _decisions_table(self) -> str:
        return table(["choice", "value", "because", "why"],
                     [(d.name, d.value, d.rule, d.why) for d in self.recipe.decisions])

    def _draw(self, fig: go.Figure) -> None:
        x, y = schedule_points(self.recipe)
        s = self.recipe.schedule
        regime = self.schedule_text().split(":")[0]
        if not fig.data:
            fig.add_scatter(mode="lines", line=dict(width=2.5, color="#1f77b4"),
                            hovertemplate="step %{x}<br>lr %{y:.3g}<extra></extra>")
        with fig.batch_update():
            fig.data[0].x, fig.data[0].y = x, y
            fig.layout.shapes = [dict(type="line", x0=b, x1=b, yref="paper", y0=0, y1=1,
                                      line=dict(dash="dot", color="#999", width=1))
                                 for b in s.decay_steps]
            fig.layout.title = (f"Learning rate: {regime}, {s.total_steps:,} steps<br><sup>"
                                f"linear warm-up {s.warmup_steps:,} steps, then / 10 after "
                                f"{', '.join(f'{b:,}' for b in s.decay_steps)}</sup>")
            fig.layout.yaxis.type = "log" if self.log_y.value else "linear"
            fig.layout.yaxis.range = ([math.log10(min(y)) - 0.3, math.log10(max(y)) + 0.3]
                                      if self.log_y.value else [0, max(y) * 1.08])
            fig.layout.xaxis.range = [0, s.total_steps]

    def static_html(self) -> str:
        fig = go.Figure(layout=self.figure.layout)
        self._draw(fig)
        return section("BiT-HyperRule (paper 3.3)", self._summary_html() + figure_html(fig)
                       + self._decisions_table())
