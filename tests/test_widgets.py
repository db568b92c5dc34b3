"""The panels driven from Python: set values, click buttons, click the heatmap, read the result.

ipywidgets catches exceptions raised by button callbacks and only logs them; the ``strict``
fixture (autouse) makes them propagate, so a bug in any callback fails the test that triggers it.
Observers and plotly click handlers already propagate.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import ipywidgets as W
import numpy as np
import pytest
import torch
from ipywidgets.widgets.widget import CallbackDispatcher
from torch.utils.data import Dataset, TensorDataset

from bitkit import events
from bitkit.dedup import DuplicateReport
from bitkit.evaluate import report_from_logits
from bitkit.hyperrule import Schedule
from bitkit.linear_eval import FewShotResult
from bitkit.models import create
from bitkit.runs import PLOTLY_MIME
from bitkit.train import TrainConfig, fit
from widgets import (
    DuplicateInspector,
    ErrorBrowser,
    FewShotExplorer,
    HyperRulePanel,
    OOCBuilder,
    TrainingMonitor,
)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(autouse=True)
def strict(monkeypatch):
    """Button callbacks raise instead of being logged by ipywidgets."""

    def call(self, *args, **kwargs):
        value = None
        for callback in self.callbacks:
            local = callback(*args, **kwargs)
            value = local if local is not None else value
        return value

    monkeypatch.setattr(CallbackDispatcher, "__call__", call)


def click_cell(fig, x, y):
    """What the browser sends when a heatmap cell is clicked (plotly's FigureWidget protocol)."""
    fig._js2py_pointsCallback = {
        "event_type": "plotly_click",
        "points": {"xs": [x], "ys": [y], "point_indexes": [[0, 0]], "trace_indexes": [0]},
        "device_state": {"alt": False, "ctrl": False, "meta": False, "shift": False,
                         "button": 0, "buttons": 1},
    }


def test_a_failing_callback_fails_the_test():
    button = W.Button()

    def broken(_b):
        raise RuntimeError("boom")

    button.on_click(broken)
    with pytest.raises(RuntimeError, match="boom"):
        button.click()


def test_a_bug_inside_a_panel_callback_is_shown_and_raised(monkeypatch):
    panel = HyperRulePanel()
    monkeypatch.setattr(HyperRulePanel, "compute", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        panel.train_size.value = 30_000
    assert "internal error" in panel.error and "ZeroDivisionError" in panel.status.value


def test_every_panel_renders_live_and_static():
    panel = HyperRulePanel()
    bundle = panel._repr_mimebundle_()
    assert bundle[WIDGET_VIEW]["model_id"] == panel.widget.model_id
    assert "small task: 500 steps" in bundle["text/html"]
    assert "plotly" in bundle["text/html"].lower()


# ---------------------------------------------------------------------------------- HyperRule


def test_hyperrule_panel_follows_the_20k_threshold():
    panel = HyperRulePanel(train_size=19_000, image_size=32)
    assert panel.schedule_text().startswith("small task: 500 steps")
    assert panel.recipe.mixup_alpha == 0
    assert "MixUp" in panel.summary.value and ">none<" in panel.summary.value
    assert panel.figure.data[0].x[-1] == 499
    panel.size_slider.value = 21_000  # the drag control; the number box follows
    assert panel.train_size.value == 21_000
    assert panel.schedule_text().startswith("medium task: 10,000 steps")
    assert "alpha = 0.1" in panel.summary.value
    assert panel.figure.data[0].x[-1] == 9_999
    assert "10,000 steps" in panel.figure.layout.title.text
    assert [s.x0 for s in panel.figure.layout.shapes] == [3000, 6000, 9000]
    assert panel.figure.data[0].y[-1] == pytest.approx(0.003 / 1000)
    panel.train_size.value = 600_000  # the number box moves the slider too
    assert panel.size_slider.value == pytest.approx(600_000)
    assert panel.schedule_text().startswith("large task: 20,000 steps")
    assert panel.error is None


def test_hyperrule_panel_resolution_card_and_bad_input():
    panel = HyperRulePanel(train_size=1000, image_size=32)
    assert (panel.recipe.resize, panel.recipe.crop) == (160, 128)
    panel.height.value, panel.width.value = 100, 100
    assert (panel.recipe.resize, panel.recipe.crop) == (512, 480)
    assert "resize 512, random crop 480" in panel.summary.value
    panel.card_picker.value = "cifar10"
    assert panel.train_size.value == 50_000 and (panel.height.value, panel.width.value) == (32, 32)
    assert "'cifar10'" in panel.recipe.source and panel.recipe.resize == 160
    good = panel.recipe
    panel.batch_split.value = 3  # 512 is not a multiple of 3
    assert "multiple of batch_split 3" in panel.error
    assert panel.recipe is good  # the last valid recipe stays
    panel.batch_split.value = 4
    assert panel.error is None and panel.recipe.micro_batch_size == 128
    panel.log_y.value = False
    assert panel.figure.layout.yaxis.type == "linear"
    assert "Why each choice" in panel.decisions.value and "paper" in panel.decisions.value


# ---------------------------------------------------------------------------------- training


class Images(Dataset):
    """32 random 16 px images; the label is the brightest colour channel. ``delay`` slows
    loading so a background run is still going when the stop button is clicked."""

    def __init__(self, delay: float = 0.0):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(32, 3, 16, 16, generator=g) * 2 - 1
        self.y = self.x.mean(dim=(2, 3)).argmax(dim=1)
        self.delay = delay

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.delay:
            time.sleep(self.delay)
        return self.x[i], int(self.y[i])


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_monitor_follows_fit(tmp_path, one_thread, monkeypatch):
    import widgets.training_monitor as tm

    shown, updated = [], []
    monkeypatch.setattr(tm, "display", lambda bundle, raw, display_id: shown.append(display_id))
    monkeypatch.setattr(tm, "update_display",
                        lambda bundle, raw, display_id: updated.append((display_id, bundle)))
    monitor = TrainingMonitor(min_interval_s=0)
    monitor._ipython_display_()
    config = TrainConfig(Schedule(0.05, 2, (6,), 10), batch_size=8, progress=False,
                         eval_every=5, checkpoint_every=5)
    result = fit(create("R14x0.25", num_classes=3), Images(), config, eval_data=Images(),
                 out_dir=tmp_path, observers=[monitor], control=monitor.control)
    assert result.reason == "done"
    assert monitor.progress.value == monitor.progress.max == 10
    train_x, train_y = monitor.series["train loss"]
    assert train_x == list(range(1, 11)) and train_y[-1] == pytest.approx(result.train_loss)
    assert monitor.series["eval top-1"][0] == [5, 10]
    assert monitor.series["eval top-1"][1][-1] == pytest.approx(100 * result.eval["top1"])  # fraction -> %
    fig_x = monitor.figure.data[0].x
    assert list(fig_x) == train_x  # the live figure shows every step
    assert list(monitor.figure.data[2].y) == pytest.approx(monitor.series["learning rate"][1])
    assert [s for s, _ in monitor.checkpoints] == [5, 10]
    assert "checkpoint.pt" in monitor.events.value
    assert "done" in monitor.progress_text.value and monitor.stop_button.disabled
    assert "ETA" not in monitor.progress_text.value and monitor.progress.bar_style == "success"
    # Headless: the displayed output is replaced by the final static figure.
    assert shown and updated and updated[-1][0] == shown[0]
    html = updated[-1][1]["text/html"]
    assert "done" in html and "plotly" in html.lower() and "last train loss" in html
    # the saved figure holds the same curves in 32-bit numbers (a notebook stays small)
    spec = json.loads(html.split(f'<script type="{PLOTLY_MIME}">', 1)[1].split("</script>", 1)[0])
    loss = spec["data"][0]
    assert loss["name"] == "train loss" and loss["y"]["dtype"] == "f4"
    assert np.frombuffer(base64.b64decode(loss["x"]["bdata"]), np.int32).tolist() == train_x
    assert np.frombuffer(base64.b64decode(loss["y"]["bdata"]), np.float32).tolist() == \
        pytest.approx(train_y, rel=1e-6)
    # the same run replayed from its metrics.jsonl (a cached run): the monitor ends the same
    again = TrainingMonitor(min_interval_s=0)
    assert events.replay(tmp_path / "metrics.jsonl", [again]) > 10
    assert again.series == monitor.series and again.checkpoints == monitor.checkpoints
    assert again.reason == "done" and again.progress.value == 10 and again.stop_button.disabled
    assert "no evaluation in this run" not in html  # this run evaluated at steps 5 and 10
    quiet = TrainingMonitor()
    quiet(events.Event("start", 0, 2))
    quiet(events.Event("step", 1, 2, {"loss": 1.0, "lr": 0.1}))
    quiet(events.Event("end", 1, 2, reason="done"))
    assert "no evaluation in this run" in quiet.static_html()  # why its accuracy panel is empty


def test_training_monitor_stop_button_stops_a_background_run(tmp_path, one_thread):
    monitor = TrainingMonitor(min_interval_s=0)
    config = TrainConfig(Schedule(0.05, 2, (6,), 400), batch_size=8, progress=False)
    monitor.start(create("R14x0.25", num_classes=3), Images(delay=0.002), config,
                  out_dir=tmp_path)
    deadline = time.monotonic() + 30
    while monitor.step < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert monitor.running and not monitor.stop_button.disabled
    assert "ETA" in monitor.progress_text.value
    monitor.stop_button.click()
    assert monitor.stop_button.disabled  # no double stop
    result = monitor.result(timeout=60)
    assert result.reason == "stopped: stop button"
    assert 2 <= result.step < 400
    assert (tmp_path / "checkpoint.pt").exists()
    assert monitor.checkpoints[-1][0] == result.step
    assert "stopped: stop button" in monitor.progress_text.value
    assert monitor.progress.bar_style == "warning"
    assert threading.active_count() >= 1 and not monitor.running


def test_training_monitor_reports_a_failed_background_run(one_thread):
    monitor = TrainingMonitor()
    bad = TensorDataset(torch.rand(8, 3, 16, 16), torch.full((8,), 7))  # class 7 of 3
    monitor.start(create("R14x0.25", num_classes=3), bad,
                  TrainConfig(Schedule(0.05, 1, (), 2), batch_size=8, progress=False))
    with pytest.raises(ValueError):
        monitor.result(timeout=60)
    assert "failed: ValueError" in monitor.progress_text.value


# ---------------------------------------------------------------------------------- few-shot


class Labelled(Dataset):
    """60 tiny images of 3 classes; each image's pixels encode its index (to check the grid)."""

    class_names = ["cat", "dog", "fox"]

    def __init__(self):
        self.targets = np.arange(60) % 3

    def __len__(self):
        return 60

    def __getitem__(self, i):
        return torch.full((3, 4, 4), i, dtype=torch.uint8), int(self.targets[i])


def test_fewshot_explorer_shows_the_subset_and_the_curve():
    result = FewShotResult({(k, s): 0.2 + 0.1 * np.log(k) + 0.02 * s
                            for k in (1, 2, 5) for s in (0, 1, 2)}, num_classes=3)
    panel = FewShotExplorer(Labelled(), result)
    assert list(panel.k.options) == [1, 2, 5] and list(panel.seed.options) == [0, 1, 2]
    assert panel.grid.value.count("<img") == 3  # 1-shot: one image per class
    one = set(panel.indices())
    panel.k.value = 5
    assert panel.grid.value.count("<img") == 15
    five = set(panel.indices())
    assert one <= five  # nested across k within a seed
    assert "5-shot</b>, seed 0: 15 training images" in panel.info.value
    assert list(panel.figure.data[3].x) == [5]
    assert panel.figure.data[3].y[0] == pytest.approx(100 * result.accuracies[(5, 0)])
    assert list(panel.figure.data[2].y) == pytest.approx([100 * result.median(k) for k in (1, 2, 5)])
    panel.seed.value = 2
    assert set(panel.indices()) != five  # another seed, another subset
    assert f"this seed {100 * result.accuracies[(5, 2)]:.1f}%" in panel.info.value
    for i in panel.indices():
        assert f'title="example {i}"' in panel.grid.value
    assert panel.error is None
    panel.k.value = 25 if 25 in panel.k.options else 5
    static = panel.static_html()
    assert "median" in static and static.count("<img") == 15


def test_fewshot_explorer_explains_a_k_too_large():
    panel = FewShotExplorer(Labelled(), shots=(1, 30), seeds=(0,))
    panel.k.value = 30  # 20 examples per class only
    assert "fewer than k=30" in panel.error and "'cat'" in panel.error


# ---------------------------------------------------------------------------------- mistakes


def small_report(n=90, c=6, seed=0):
    g = np.random.default_rng(seed)
    y = np.arange(n) % c
    logits = g.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    return report_from_logits(logits, y, ids=[f"test:{i}" for i in range(n)],
                              class_names=[f"class{i}" for i in range(c)])


def image_list(report):
    return [(torch.full((3, 8, 8), i % 255, dtype=torch.uint8), int(t))
            for i, t in enumerate(report.targets)]


def test_error_browser_filters_sorts_and_pages(tmp_path):
    report = small_report()
    browser = ErrorBrowser(report, image_list(report), annotations=tmp_path / "r.json",
                           page_size=5)
    mistakes = int((~report.correct(1)).sum())
    assert len(browser.rows) == mistakes and len(browser.grid.children) == 5
    losses = [r["loss"] for r in browser.rows]
    assert losses == sorted(losses, reverse=True)
    assert f"of {mistakes}" in browser.page_label.value
    browser.sort.value = "least confident first"
    conf = [r["confidence"] for r in browser.rows]
    assert conf == sorted(conf)
    browser.true_filter.value = 2
    assert browser.rows and all(r["true"] == 2 for r in browser.rows)
    assert len(browser.rows) == int(((report.label == 2) & ~report.correct(1)).sum())
    browser.pred_filter.value = 4
    assert all(r["predicted"] == 4 for r in browser.rows)
    browser.clear_button.click()
    assert len(browser.rows) == mistakes and browser.true_filter.value == -1  # any class
    browser.next_button.click()
    assert browser.page == 1 and browser.prev_button.disabled is False
    first_card = browser.grid.children[0].children[0].value
    assert browser.rows[5]["id"] in first_card and "<img" in first_card
    assert first_card.count("height:9px;width:") == 5  # top-5 bars
    for k in report.topk[browser.rows[5]["index"]][:5]:  # every class name in full, not cut
        assert f">{report.class_names[int(k)]}<" in first_card.replace("<b>", "").replace("</b>", "")
    assert browser.error is None


def test_error_browser_heatmap_click_filters_the_grid(tmp_path):
    report = small_report()
    browser = ErrorBrowser(report, image_list(report), annotations=None)
    cell = report.most_confused(1)[0]
    z = np.asarray(browser.figure.data[0].z, dtype=float)
    assert z[cell["true"], cell["predicted"]] == cell["count"] and np.isnan(z[0, 0])
    json.dumps(browser.figure.data[0].z, allow_nan=False)  # a NaN would break the widget sync
    root = browser._root.children  # the grid a click filters is right below the heatmap
    assert root.index(browser.figure) < root.index(browser.grid)
    click_cell(browser.figure, cell["predicted_name"], cell["true_name"])
    assert browser.true_filter.value == cell["true"]
    assert browser.pred_filter.value == cell["predicted"]
    assert len(browser.rows) == cell["count"] == len(browser.grid.children)
    assert all(r["true_name"] == cell["true_name"] for r in browser.rows)
    assert browser.error is None


def test_error_browser_annotations_are_saved_and_reloaded(tmp_path):
    report = small_report()
    path = tmp_path / "review.json"
    browser = ErrorBrowser(report, image_list(report), annotations=path, page_size=4)
    ids = [r["id"] for r in browser.page_rows()]
    for card, verdict in zip(browser.grid.children, ["model right", "label right", "unsure"],
                             strict=False):
        card.children[1].value = verdict
    assert "#c62828" in browser.grid.children[1].children[0].value  # red border: label right
    saved = json.loads(path.read_text())
    assert saved["labels"] == {ids[0]: "model right", ids[1]: "label right", ids[2]: "unsure"}
    assert "reviewed 3/" in browser.summary.value
    # counts, not rates, after 3 verdicts: "100% label noise" after one would say nothing
    assert "clearly right for 1 of 3 reviewed mistakes; 2 of 3 are ambiguity or label noise " \
           "(review at least 10 for a rate)" in browser.summary.value
    assert "%)" not in browser.summary.value.split("reviewed 3/")[1].split("(paper")[0]
    browser.grid.children[2].children[1].value = None  # un-review
    again = ErrorBrowser(report, image_list(report), annotations=path, page_size=4)
    assert again.review_counts() == {"model right": 1, "label right": 1, "unsure": 0,
                                     "both wrong": 0}
    assert [c.children[1].value for c in again.grid.children[:3]] == ["model right",
                                                                      "label right", None]
    again.review_filter.value = "label right"
    assert [r["id"] for r in again.rows] == [ids[1]]
    again.review_filter.value = "not reviewed yet"
    assert ids[0] not in {r["id"] for r in again.rows}
    static = again.static_html()
    assert "Most confused classes" in static and "label right" in static


def test_error_browser_clear_errors_for_user_mistakes(tmp_path):
    report = small_report()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a valid JSON"):
        ErrorBrowser(report, annotations=bad)
    bad.write_text(json.dumps({"format": "bitkit.mistake-review/1", "labels": {"x": "maybe"}}))
    with pytest.raises(ValueError, match="unknown label.*'maybe'"):
        ErrorBrowser(report, annotations=bad)
    report.class_names = []
    with pytest.raises(ValueError, match="class names"):
        ErrorBrowser(report, annotations=None)
    report = small_report()
    with pytest.raises(ValueError, match="images has 3 examples but the report has 90"):
        ErrorBrowser(report, image_list(report)[:3], annotations=None)


def planted(report):
    """Ground truth for small_report: three mistakes whose label is wrong and whose prediction
    is the true class, one whose label and prediction are both wrong, one planted error the
    model "gets right" (it predicts the wrong label too), and one example outside the report."""
    from bitkit.data.world import LabelError

    wrong = np.nonzero(~report.correct(1))[0]
    right = np.nonzero(report.correct(1))[0]
    c = report.num_classes
    rows = [(int(i), int(report.predicted[i])) for i in wrong[:3]]
    third = next(k for k in range(c) if k not in (report.label[wrong[3]], report.predicted[wrong[3]]))
    rows += [(int(wrong[3]), third), (int(right[0]), (int(report.label[right[0]]) + 1) % c)]
    truth = [LabelError(str(report.ids[i]), i, true, int(report.label[i])) for i, true in rows]
    return truth + [LabelError("test:9999", 9999, 0, 1)], wrong


def test_error_browser_scores_the_review_against_planted_label_errors(tmp_path):
    report = small_report()
    truth, wrong = planted(report)
    browser = ErrorBrowser(report, image_list(report), annotations=tmp_path / "r.json",
                           label_errors=truth)
    assert browser.review_score() == {
        "planted": 5, "in_mistakes": 4, "hidden": 1, "reviewed": 0, "found": 0,
        "remaining": 4, "model_right": 0, "model_right_correct": 0, "false_alarms": 0}
    assert 'no "model right" verdicts yet; you found <b>0 of the 4</b>' in browser.summary.value
    ids = [str(report.ids[i]) for i in wrong]
    browser.annotate(ids[0], "model right")  # right: label wrong, model predicts the truth
    browser.annotate(ids[1], "model right")  # right
    browser.annotate(ids[2], "label right")  # missed: the label is a planted error
    browser.annotate(ids[3], "model right")  # label wrong (found), but the model is wrong too
    browser.annotate(ids[4], "both wrong")   # a false alarm: this label is right
    browser.annotate(ids[5], "label right")  # right, and not a planted error
    score = browser.review_score()
    assert score == {"planted": 5, "in_mistakes": 4, "hidden": 1, "reviewed": 4, "found": 3,
                     "remaining": 1, "model_right": 3, "model_right_correct": 2,
                     "false_alarms": 1}
    summary = browser.summary.value
    assert ("verdicts were right 2 of 3 times" in summary and "found <b>3 of the 4</b>" in summary
            and "<b>1 remain</b>" in summary and "1 more hides where" in summary
            and "false alarms: 1" in summary)
    assert "found <b>3 of the 4</b>" in browser.static_html()  # the executed copy shows it
    browser.annotate(ids[2], "both wrong")  # the last one found
    assert browser.review_score()["remaining"] == 0 and browser.review_score()["found"] == 4
    # the truth is never shown on the cards: it would give the answer away
    browser.sort.value = "dataset order"
    assert all("planted" not in card.children[0].value for card in browser.grid.children)


def test_error_browser_without_ground_truth_works_as_before():
    report = small_report()
    browser = ErrorBrowser(report, image_list(report), annotations=None)
    browser.annotate(str(report.ids[~report.correct(1)][0]), "model right")
    assert browser.review_score() is None
    assert "ground truth" not in browser.summary.value + browser.static_html()
    exact = ErrorBrowser(report, annotations=None, label_errors=[])  # known: no label is wrong
    exact.annotate(str(report.ids[~report.correct(1)][0]), "model right")
    assert exact.review_score()["false_alarms"] == 1 and exact.review_score()["planted"] == 0
    assert "no label in this test set is wrong" in exact.summary.value


def test_error_browser_refuses_ground_truth_of_another_test_set():
    from bitkit.data.world import LabelError

    report = small_report()
    label = int(report.label[0])
    with pytest.raises(ValueError, match="label_errors do not match the report: test:0 has "
                                         f"label {label}"):
        ErrorBrowser(report, annotations=None,
                     label_errors=[LabelError("test:0", 0, label, (label + 1) % 6)])
    with pytest.raises(TypeError, match="LabelError items"):
        ErrorBrowser(report, annotations=None, label_errors=[("test:0", 0, 1)])


# ---------------------------------------------------------------------------------- duplicates


class Named(Dataset):
    def __init__(self, prefix, n):
        self.prefix, self.n = prefix, n

    def __len__(self):
        return self.n

    def example_id(self, i):
        return f"{self.prefix}:{i}"

    def __getitem__(self, i):
        return torch.full((3, 8, 8), 20 * i, dtype=torch.uint8), 0


def dup_report():
    sims = np.array([[0.99], [0.97], [0.93], [0.90], [0.70], [0.60]], dtype=np.float32)
    return DuplicateReport(np.array([f"t:{i}" for i in range(6)]),
                           np.array([[f"u:{i}"] for i in range(6)]), sims,
                           exact=[("t:0", "u:0")], threshold=0.95)


def test_duplicate_inspector_threshold_counts_and_precision_recall(tmp_path):
    truth = [("t:0", "u:0"), ("t:1", "u:1"), ("t:3", "u:3")]
    panel = DuplicateInspector(dup_report(), downstream=Named("t", 6), upstream=Named("u", 6),
                               ground_truth=truth, marks=tmp_path / "marks.json")
    assert "<b>2</b> pairs" in panel.counts.value and "recall <b>66.7%</b>" in panel.counts.value
    panel.threshold.value = 0.92
    assert len(panel.list.children) == 3
    assert "precision <b>66.7%</b>" in panel.counts.value
    panel.threshold.value = 0.85
    s = panel.stats()
    assert (s["pairs"], s["precision"], s["recall"]) == (4, 0.75, 1.0)
    assert panel.figure.layout.shapes[0].x0 == pytest.approx(0.85)
    assert [t.name for t in panel.figure.data] == ["precision", "recall", "f1",
                                                   "planted precision"]
    row = panel.list.children[2]  # t:2 | u:2, not a known pair
    assert "not a known pair" in row.children[0].value and row.children[0].value.count("<img") == 2
    assert "#c62828" in row.children[0].value  # red: a false positive
    row.children[1].value = "false positive"
    panel.list.children[0].children[1].value = "true duplicate"
    assert "your marks: 1 true, 1 false" in panel.counts.value
    # a mark is a badge; the border keeps meaning the kind (found: green)
    first = panel.list.children[0].children[0].value
    assert "your mark: true duplicate" in first and "#2e7d32" in first
    reloaded = DuplicateInspector(dup_report(), marks=tmp_path / "marks.json")
    assert reloaded.marks == {"t:0 | u:0": "true duplicate", "t:2 | u:2": "false positive"}
    assert reloaded.figure.data[0].type == "histogram"  # no ground truth: similarity histogram
    assert panel.error is None and reloaded.error is None


def test_duplicate_inspector_shows_found_missed_false_and_look_alikes():
    """A verified report: the kinds by view, with the right colours and counts."""
    sims = np.array([[0.99], [0.97], [0.96], [0.90]], dtype=np.float32)
    report = DuplicateReport(
        np.array([f"t:{i}" for i in range(4)]), np.array([[f"u:{i}"] for i in range(4)]), sims,
        threshold=0.95, meta={"score": "pixel"}, cosine=np.full((4, 1), 0.8, np.float32),
        detail=sims.copy(), colour_error=np.full((4, 1), 0.01, np.float32),
        pixel_error=np.array([[0.01], [0.02], [0.20], [0.03]], np.float32))
    truth = [("t:0", "u:0"), ("t:3", "u:3")]  # t:1 near-identical, t:2 not, t:3 missed
    panel = DuplicateInspector(report, downstream=Named("t", 4), upstream=Named("u", 4),
                               ground_truth=truth)
    s = panel.stats()
    assert (s["true_positives"], s["look_alikes"], s["false_positives"], s["missed"]) == (1, 1, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3) and s["planted_precision"] == pytest.approx(1 / 3)
    assert s["recall"] == 0.5 and "1 look-alikes" in panel.counts.value
    for view, pair, colour in (("found", "t:0", "#2e7d32"), ("look-alikes", "t:1", "#1565c0"),
                               ("false positives", "t:2", "#c62828"), ("missed", "t:3", "#ef6c00")):
        panel.view.value = view
        assert [p["downstream_id"] for p in panel.pairs] == [pair]
        html = panel.list.children[0].children[0].value
        assert colour in html and "pixel score" in html and "detail" in html
    assert "view: missed" in panel.static_html() and panel.error is None


def test_duplicate_inspector_says_why_a_pair_below_the_threshold_is_flagged():
    sims = np.array([[0.92, 0.55], [0.97, 0.60]], np.float32)  # both far ahead of the runner-up
    report = DuplicateReport(np.array(["t:0", "t:1"]), np.array([["u:0", "u:2"], ["u:1", "u:3"]]),
                             sims, threshold=0.95, meta={"score": "pixel"},
                             pixel_error=np.full((2, 2), 0.1, np.float32))
    panel = DuplicateInspector(report, downstream=Named("t", 2), upstream=Named("u", 4))
    html = {p["downstream_id"]: row.children[0].value
            for p, row in zip(panel.pairs, panel.list.children, strict=True)}
    assert set(html) == {"t:0", "t:1"}  # 0.92: flagged as a distinct best match
    assert "distinct: far above the runner-up" in html["t:0"]
    assert "distinct" not in html["t:1"]  # above the threshold: no rule needed


# ---------------------------------------------------------------------------------- OOC


def test_ooc_builder_previews_and_builds(tmp_path):
    builder = OOCBuilder.from_world(3, image_size=32, out_dir=tmp_path / "ooc")
    fg = builder.foregrounds[builder.fg.value]
    assert fg.mask.dtype == bool  # world alpha masks were thresholded
    assert builder.image.shape == (32, 32, 3) and builder.record["placement"] == "center"
    assert "of the width (rule F.1)" in builder.details.value
    builder.size.value = 64
    assert builder.image.shape == (64, 64, 3)
    assert max(builder.record["object_box"][2:]) == round(0.8 * 64)
    builder.placement.value = "random"
    positions = set()
    for seed in range(6):
        builder.seed.value = seed
        positions.add(tuple(builder.record["position"]))
    assert len(positions) > 1 and not builder.seed.disabled
    usual = builder.contexts[builder.fg.value]
    for value in (b for _, b in builder.bg.options):
        builder.bg.value = value
        expected = "in context" if builder.backgrounds[value].name == usual else "out of context"
        assert builder.context_note().startswith(expected)
    builder.fg_pick.value = builder.fg_pick.value[:2]
    builder.bg_pick.value = builder.bg_pick.value[:3]
    assert "6 images" in builder.count.value
    builder.build_button.click()
    assert builder.error is None and len(builder.built) == 6
    assert len(list((tmp_path / "ooc" / "images").glob("*.png"))) == 6
    assert "built <b>6</b> images" in builder.result.value
    builder.build_button.click()  # the folder is not empty now
    assert "tick 'overwrite'" in builder.error
    builder.overwrite.value = True
    builder.build_button.click()
    assert builder.error is None
    assert "Out-of-context builder" in builder._repr_mimebundle_()["text/html"]
