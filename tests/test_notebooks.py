"""The lesson notebooks: committed clean, parametrised, and run headless through ``bitkit run``.

Every lesson is executed with small parameters, and its ``metrics.json`` is checked: numbers in
sensible ranges and the comparisons the lesson claims. The lessons share their upstream models
(one ``BITKIT_CACHE`` for the session): the first lesson that needs one pre-trains it, the
others reuse it.
"""

import json
import re
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from bitkit import runs
from bitkit.data import world

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["00_quickstart", "01_architecture", "02_pretraining", "03_transfer", "04_few_shot",
            "05_vtab", "06_error_browser", "07_duplicates", "08_out_of_context", "09_released_bit"]

# The upstream settings of the lessons' defaults (600 steps of 128 on 50,000 images; each lesson
# adds its own peak lr): the smallest that makes transfer beat scratch by a clear margin.
UPSTREAM = dict(upstream_size=50_000, upstream_steps=600, upstream_batch=128)


def _cells(path):
    return nbformat.read(str(path), as_version=4).cells


# --------------------------------------------------------------------------------------------
# Static: clean, parametrised, the right kernel, exercises with solutions apart
# --------------------------------------------------------------------------------------------


def test_the_lessons_are_there():
    names = [p.stem for p in LESSONS]
    assert set(EXPECTED) <= set(names), f"missing lessons: {set(EXPECTED) - set(names)}"
    assert (NOTEBOOKS / "README.md").is_file()


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_parametrised(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    cells = nb.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith(f"# {path.stem[:2]} ")
    code = [c for c in cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "outputs committed"
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be parameters"
    assert sum("parameters" in c.metadata.get("tags", []) for c in cells) == 1
    assert "lesson.check_parameters(" in code[1].source, "validate right after the parameters"
    assert runs.notebook_parameters(path)  # papermill sees the parameters
    # every notebook cites the paper
    assert re.search(r"paper (section )?\d|supplementary [A-F]", cells[0].source, re.IGNORECASE)
    assert "## Exercises" in cells[-1].source
    solutions = NOTEBOOKS / "solutions" / f"{path.stem}.md"
    assert solutions.is_file() and solutions.read_text().count("## Exercise") >= 2


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_is_a_course_unit(path):
    """Objectives, prerequisites and time up front; a prediction before each headline result; a
    self-check whose answers go to metrics.json; solutions that are code the suite runs."""
    cells = _cells(path)
    intro = cells[0].source
    objectives = re.search(r"\*\*Learning objectives\.\*\* After this lesson you can:\n"
                           r"((?:- .+\n?(?:  .+\n?)*)+)", intro)
    assert objectives, "the first cell states the learning objectives"
    assert 3 <= len(re.findall(r"^- ", objectives[1], re.MULTILINE)) <= 4
    assert re.search(r"\*\*Prerequisites:\*\* (none|lessons? \d\d)", intro)
    assert re.search(r"\*\*Time:\*\* about [\d.]+(-[\d.]+)? min on a 2-core CPU.*about "
                     r"[\d.]+(-[\d.]+)? min on one GPU", intro, re.DOTALL)
    markdown = [c.source for c in cells if c.cell_type == "markdown"]
    assert any(m.startswith("**Predict before you run.**") for m in markdown)
    at = next(i for i, c in enumerate(cells) if c.cell_type == "markdown"
              and c.source.startswith("## Self-check"))
    quiz = cells[at + 1]
    assert quiz.cell_type == "code" and "SelfCheck(" in quiz.source
    assert "answer_key(" in "".join(c.source for c in cells if c.cell_type == "code")
    solutions = runs.solution_cells(path)  # raises when the file is missing or has no code
    exercises = len(re.findall(r"^## Exercise", runs.solutions_file(path).read_text(),
                               re.MULTILINE))
    assert sum(c.cell_type == "code" for c in solutions) >= exercises  # code for each


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_kernelspec_is_the_projects_and_papermill_finds_it(path):
    spec = nbformat.read(str(path), as_version=4).metadata.kernelspec
    assert spec.name == runs.KERNEL
    found = KernelSpecManager().get_kernel_spec(spec.name)  # make test installs it in .venv
    assert Path(found.argv[0]).exists() and found.language == "python"


# --------------------------------------------------------------------------------------------
# Executed headless
# --------------------------------------------------------------------------------------------


def run(name, tmp_path, solutions=False, **params):
    """Execute lesson ``name`` (with its worked solutions appended when ``solutions``) and
    check what every executed lesson must be; return its metrics."""
    result = runs.run_notebook(NOTEBOOKS / f"{name}.ipynb", params, tmp_path / name,
                               log_output=False, cell_timeout=600, solutions=solutions)
    html = result.html.read_text()
    assert "Plotly.newPlot" in html  # plots survive the HTML export ...
    executed = nbformat.read(str(result.executed), as_version=4)
    plots = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
             if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert plots  # ... and show in the executed notebook
    for o in plots:  # every figure has a title, and the HTML carries it
        title = o["data"]["application/vnd.plotly.v1+json"]["layout"]["title"]["text"]
        assert title and title.split("<")[0][:30] in html
    assert result.metrics, "the notebook wrote no metrics.json"
    # the executed copy reopens without its kernel: static views, no dangling widget models,
    # small enough for a course repository; its HTML export carries plotly.js once
    assert "widgets" not in executed.metadata
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
                if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert result.executed.stat().st_size < 1_000_000, result.executed.stat().st_size
    assert html.count("* plotly.js v") == 1
    return result.metrics


def values(v):
    """A figure's data array as a list: plotly writes numeric arrays as typed binary
    (``{"dtype": "f8", "bdata": base64}``)."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def figures(out_dir, title_start):
    """The plotly figures (JSON) in an executed lesson whose title starts with ``title_start``."""
    (executed,) = out_dir.glob("*.ipynb")
    nb = nbformat.read(str(executed), as_version=4)
    found = [o["data"]["application/vnd.plotly.v1+json"] for c in nb.cells if c.cell_type == "code"
             for o in c.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    return [f for f in found if f["layout"]["title"]["text"].startswith(title_start)]


# The quickstart's test parameters: both arms choose from two lrs on 100 held-out images.
QUICKSTART = dict(train_size=100, val_size=100, steps=30, lrs=[0.01, 0.1], test_size=300)


def jsonl_losses(folder):
    """The training loss per step that ``fit`` wrote to ``folder/metrics.jsonl``."""
    from bitkit import events

    return {r["step"]: r["metrics"]["loss"] for r in events.read_jsonl(folder / "metrics.jsonl")
            if r["kind"] == "step"}


def chosen(val):
    """The lr a sweep chooses from ``{lr: held-out top-1}``: the best, ties to the first."""
    return float(max(val, key=lambda lr: (val[lr], -list(val).index(lr))))


@pytest.mark.slow
def test_00_quickstart(shared_cache, tmp_path):
    """The quickstart at QUICKSTART, with its worked solutions.

    Claim: transfer beats the same network from scratch, each arm at the lr it chose on the
    same held-out training images. Measured gain (test top-1 points, 300 test images) at
    QUICKSTART with seeds 0, 1, 2 (upstream model of seed 0): +13.3, +22.0, +34.7 (transfer
    75.7 / 77.3 / 82.3 %, scratch 62.3 / 55.3 / 47.7 %); asserted: gain > 5. At the lesson's
    defaults (100 images, 250 held-out, 100 steps, lrs 0.01/0.03/0.1, 1,000 test images):
    +9.4, +10.8, +11.3 (``bench/transfer_defaults.py``, its 100-image table, world version 5).
    With the rule's
    upstream lr (0.015) instead of the lesson's 0.1 the
    defaults gave +7.7, -1.0, +0.3 (lrs 0.003-0.1): a tie, which the lesson quotes.
    """
    out = tmp_path / "00_quickstart"
    m = run("00_quickstart", tmp_path, solutions=True, **UPSTREAM, **QUICKSTART)
    assert m["train_size"] == 100 and m["steps"] == 30 and m["test_size"] == 300
    assert m["val_size"] == 100 and m["lrs"] == [0.01, 0.1]
    assert m["chance_top1"] == 5.0
    assert 10 < m["scratch_top1"] < 95 and 10 < m["transfer_top1"] <= 100
    # each arm's lr is the one its held-out images chose, and its test number is that run's
    for arm in ("transfer", "scratch"):
        assert m[f"{arm}_lr"] == chosen(m[f"{arm}_val_top1"]), arm
        assert m[f"{arm}_top1"] == m[f"{arm}_test_top1"][str(m[f"{arm}_lr"])], arm
    assert m["gain"] == pytest.approx(m["transfer_top1"] - m["scratch_top1"], abs=1e-3)
    assert m["gain"] > 5  # the lesson's claim, margin measured over 3 seeds (docstring)
    assert m["mistakes"] == round(300 * (1 - m["transfer_top1"] / 100))

    # the held-out curves are the sweeps' numbers, and the stars sit on the chosen lrs
    (fig,) = figures(out, "Held-out top-1 by learning rate")
    lines = {t["name"]: t for t in fig["data"]}
    for name, arm in (("BiT transfer", "transfer"), ("from scratch", "scratch")):
        assert values(lines[name]["x"]) == [0.01, 0.1]
        assert values(lines[name]["y"]) == pytest.approx(
            [m[f"{arm}_val_top1"][str(lr)] for lr in (0.01, 0.1)], abs=1e-4)
    assert values(lines["chosen lr"]["x"]) == [m["transfer_lr"], m["scratch_lr"]]
    assert fig["layout"]["xaxis"]["type"] == "log"
    # the loss curves are the chosen runs' metrics.jsonl, every step
    (fig,) = figures(out, "Fine-tuning loss on world-objects at each arm's chosen lr")
    curves = {t["name"]: t for t in fig["data"]}
    for name, arm in (("BiT transfer", "transfer"), ("from scratch", "scratch")):
        lr = m[f"{arm}_lr"]
        trace = curves[f"{name} (lr {lr:g})"]
        want = jsonl_losses(out / "runs" / arm / f"lr={lr:g}")
        assert values(trace["x"]) == list(want) == list(range(1, 31))
        assert values(trace["y"]) == pytest.approx(list(want.values()), rel=1e-6)
    # the bar chart's bars are the two arms' test top-1, labelled with their lrs
    (fig,) = figures(out, "Test top-1 on world-objects after 30 steps on 100 images")
    (bars,) = fig["data"]
    assert values(bars["x"]) == [f"from scratch (lr {m['scratch_lr']:g})",
                                 f"BiT transfer (lr {m['transfer_lr']:g})"]
    assert values(bars["y"]) == pytest.approx([m["scratch_top1"], m["transfer_top1"]], abs=1e-4)
    # each training monitor's static view holds its whole sweep: 2 lrs x 30 steps, and the
    # chosen lr's stretch of the loss is that run's metrics.jsonl
    for title, arm in (("BiT transfer: 2 runs", "transfer"), ("From scratch: 2 runs", "scratch")):
        (fig,) = figures(out, title)
        loss = {t["name"]: t for t in fig["data"]}["train loss"]
        assert values(loss["x"]) == list(range(1, 61))
        i = m["lrs"].index(m[f"{arm}_lr"])
        want = jsonl_losses(out / "runs" / arm / f"lr={m[arm + '_lr']:g}")
        assert values(loss["y"])[30 * i:30 * (i + 1)] == pytest.approx(list(want.values()),
                                                                        rel=1e-6)

    # the upstream run's monitor holds its whole loss curve, live or replayed from the cache:
    # the metrics.jsonl of the shared model the lesson used
    (fig,) = figures(out, "pre-training R14x0.25 on 50,000 upstream images, 600 steps")
    (folder,) = [d for d in shared_cache.glob("pretrained/R14x0.25-world-upstream-50000-*")
                 if json.loads((d / "settings.json").read_text()) | {"bitkit": None} == {
                     "model": "R14x0.25", "upstream": "world-upstream", "size": 50_000,
                     "steps": 600, "batch_size": 128, "variant": "S", "seed": 0, "train": {},
                     "bitkit": None, "world": world.VERSION, "base_lr": 0.1}]
    loss = {t["name"]: t for t in fig["data"]}["train loss"]
    want = jsonl_losses(folder)
    assert values(loss["x"]) == list(want) == list(range(1, 601))
    assert values(loss["y"]) == pytest.approx(list(want.values()), rel=1e-6)

    # every caption of the mistakes grid sits over its own image (plotly orders facet titles
    # bottom row first): the annotation above trace i's subplot names mistake i
    (fig,) = figures(out, "The 16 most confident mistakes")
    layout, captions = fig["layout"], fig["layout"]["annotations"]
    assert len(captions) == len(fig["data"]) == len(m["confident_mistakes"]) == 16
    for trace, (true, predicted) in zip(fig["data"], m["confident_mistakes"], strict=True):
        xd = layout[trace["xaxis"].replace("x", "xaxis")]["domain"]
        yd = layout[trace["yaxis"].replace("y", "yaxis")]["domain"]
        (above,) = [a for a in captions if abs(a["x"] - (xd[0] + xd[1]) / 2) < 1e-6
                    and abs(a["y"] - yd[1]) < 1e-6]
        assert above["text"].startswith(f"{true}<br>→ {predicted}<br>(")

    # the self-check's answers are this run's numbers
    key = {q["question"]: q["answer"] for q in m["self_check"]}
    t_lr, s_lr, gain = m["transfer_lr"], m["scratch_lr"], m["gain"]
    assert key["In your run, which lr did the from-scratch arm choose, compared with the "
               "transfer arm's?"] == ("larger" if s_lr > t_lr else "the same" if s_lr == t_lr
                                      else "smaller")
    assert key["In your run, by how much did transfer beat scratch on test, each arm at its own "
               "lr?"] == ("by more than 5 points" if gain > 5 else "by 0 to 5 points"
                          if gain > 0 else "it did not")
    assert key["On which images did each arm choose its learning rate?"] == (
        "held-out training images")

    # the worked solutions ran in the lesson's kernel and added their numbers
    ex1, ex2, ex3 = m["exercise_1"], m["exercise_2"], m["exercise_3"]
    assert ex1["sizes"] == [100, 400] and ex1["gain"][0] == pytest.approx(gain, abs=1e-3)
    assert ex2 == {"1000": {"steps": 500, "mixup": 0.0, "crop": 128},
                   "50000": {"steps": 10_000, "mixup": 0.1, "crop": 128},
                   "1000000": {"steps": 20_000, "mixup": 0.1, "crop": 128}}
    assert ex3["gain_task"] == pytest.approx(gain, abs=1e-3) and -100 < ex3["gain_count"] < 100
    assert list(shared_cache.glob("pretrained/*/model.safetensors"))  # cached for the others


def test_a_bad_parameter_fails_in_the_first_cells(shared_cache, tmp_path):
    # bitkit run checks with the lesson's own rules before a kernel starts ...
    with pytest.raises(ValueError) as e:
        runs.run_notebook(NOTEBOOKS / "00_quickstart.ipynb", {"task": "world-objcts"},
                          tmp_path / "bad", log_output=False)
    assert "00_quickstart.ipynb: parameter task = 'world-objcts'" in str(e.value)
    assert "Did you mean 'world-objects'" in str(e.value)
    assert not (tmp_path / "bad" / "00_quickstart.ipynb").exists()  # no kernel was started
    # ... and the notebook checks again in its first cells, for a student editing the cell
    import papermill
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as e:
        papermill.execute_notebook(str(NOTEBOOKS / "00_quickstart.ipynb"),
                                   str(tmp_path / "direct.ipynb"), parameters={"task": "world-objcts"},
                                   kernel_name="bitkit", cwd=str(tmp_path), progress_bar=False)
    assert e.value.ename == "ParameterError" and "parameter task = 'world-objcts'" in e.value.evalue
    assert "Did you mean 'world-objects'" in e.value.evalue
    assert e.value.cell_index <= 3  # before any training


@pytest.mark.parametrize("name, given, message", [
    ("00_quickstart", {"train_size": None}, "parameter train_size = None"),
    ("01_architecture", {"train_size": None}, "parameter train_size = None"),
    ("01_architecture", {"micro_batch": None}, "parameter micro_batch = None"),
    ("01_architecture", {"micro_batch": 32}, "parameter micro_batch = 32"),
    ("07_duplicates", {"train_size": 5000}, "parameter train_size = 5000"),
    ("08_out_of_context", {"iid_size": 20000}, "parameter iid_size = 20000"),
])
def test_a_value_the_comparison_cannot_use_fails_in_the_check_cell(tmp_path, name, given,
                                                                   message):
    # values a generic rule accepts (train_size None means "all" elsewhere) but this lesson
    # cannot use (its comparison, its task's or upstream's split sizes): a ParameterError in
    # the check cell, not a TypeError or IndexError minutes later
    import papermill
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as e:
        papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / "bad.ipynb"),
                                   parameters=given, kernel_name="bitkit", cwd=str(tmp_path),
                                   progress_bar=False)
    assert e.value.ename == "ParameterError" and message in e.value.evalue
    assert e.value.cell_index <= 3  # papermill's injected cell, then the check cell


def test_02_a_pool_too_small_for_the_shots_fails_before_pre_training(shared_cache, tmp_path):
    # 200 world-objects images leave a class with 4: a 5-shot subset cannot be drawn. The
    # lesson says so where it loads the data, not minutes later after pre-training its grid.
    import papermill
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as e:
        papermill.execute_notebook(str(NOTEBOOKS / "02_pretraining.ipynb"),
                                   str(tmp_path / "small_pool.ipynb"),
                                   parameters={"pool_size": 200, "shots": [1, 5], "val_size": 10,
                                               "test_size": 10},
                                   kernel_name="bitkit", cwd=str(tmp_path), progress_bar=False)
    assert e.value.ename == "ParameterError" and "parameter pool_size = 200" in e.value.evalue
    assert "fewer than max(shots) = 5" in e.value.evalue
    assert e.value.cell_index <= 4  # the data cell (papermill injected one), before any model


@pytest.mark.slow
def test_01_architecture(shared_cache, tmp_path):
    """GN+WS holds up at a tiny per-device batch where BN degrades, each arm with its own lr
    chosen on held-out examples, mean of seeds 0-2 (the lesson's own three runs per arm).

    Measured at these parameters (2026-12-02, 2-core CPU), mean (per seed 0/1/2):
    BN loses 24.8 points going to 2 images per device (17.0/36.5/21.0), BN+WS 37.5; GN+WS
    changes by -2.2 (8.0/0.5/-15.0: noise, each micro-batch draws its own crops), GN by 1.5;
    at 2 per device GN+WS beats BN by 25.5 (16.5/26.5/33.5). Margins: BN's drop >= 10, the
    gap >= 10, |GN+WS's drop| <= 12 and at least 10 below BN's (measured 27.0). (At 40 steps
    and 400/300 examples: 28.0, 4.4 and 28.6, the same picture.) 62 s of CPU for the lesson.
    """
    m = run("01_architecture", tmp_path, solutions=True, **TEST01)
    variants, per_device = ["BN", "BN+WS", "GN", "GN+WS"], (16, 2)
    err = m["split_error"]
    assert err["GN+WS"] < 1e-4 and err["GN"] < 1e-4  # exact: no batch statistics
    assert err["BN"] > 1e-2 and err["BN+WS"] > 1e-2  # BN's gradient depends on the split
    arms = [f"{v}@{b}" for v in variants for b in per_device]
    assert set(m["top1"]) == set(arms) and m["seeds"] == [0, 1, 2]
    for arm in arms:  # every arm: three seeds, its mean, an lr from the grid chosen on held-out
        seeds = m["top1_per_seed"][arm]
        assert len(seeds) == 3 and all(0 <= t <= 100 for t in seeds)
        assert m["top1"][arm] == pytest.approx(sum(seeds) / 3, abs=1e-4)
        assert m["lr"][arm] in TEST01["lrs"] and set(m["val_top1"][arm]) == {"0.05", "0.1"}
        assert m["val_top1"][arm][f"{m['lr'][arm]:g}"] == max(m["val_top1"][arm].values())
    for v in variants:
        assert m["split_drop"][v] == pytest.approx(
            m["top1"][f"{v}@16"] - m["top1"][f"{v}@2"], abs=1e-4)
    # the claim, margins measured over the three seeds (docstring)
    assert m["bn_split_drop"] >= 10  # BN loses at 2 images per device
    assert m["tiny_gnws_minus_bn"] >= 10  # GN+WS beats BN there
    assert abs(m["gnws_split_drop"]) <= 12  # GN+WS: no systematic loss, only seed noise
    assert m["bn_split_drop"] - m["gnws_split_drop"] >= 10
    assert m["chance_top1"] == 5.0
    # the self-check's answers are this run's
    worst = max(m["split_drop"], key=m["split_drop"].get)
    assert m["self_check"][0]["answer"] == worst
    assert m["self_check"][1]["answer"] == "GN and GN+WS" and len(m["self_check"]) == 3
    # the bar chart shows what the lesson computed: one bar per arm (mean of the seeds), side by
    # side, whiskers from the seeds' min to max
    (fig,) = figures(tmp_path / "01_architecture", "From scratch on")
    assert fig["layout"]["barmode"] == "group"
    assert "mean of 3 seeds" in fig["layout"]["title"]["text"]
    traces = {t["name"]: t for t in fig["data"] if t["type"] == "bar"}
    assert set(traces) == {"16 per device", "2 per device"}
    for batch in per_device:
        t = traces[f"{batch} per device"]
        got = dict(zip(values(t["x"]), values(t["y"]), strict=True))
        assert list(got) == variants
        assert got == pytest.approx({v: m["top1"][f"{v}@{batch}"] for v in got}, abs=1e-4)
        hi = [max(m["top1_per_seed"][f"{v}@{batch}"]) for v in variants]
        lo = [min(m["top1_per_seed"][f"{v}@{batch}"]) for v in variants]
        assert [y + e for y, e in zip(values(t["y"]), values(t["error_y"]["array"]),
                                      strict=True)] == pytest.approx(hi, abs=1e-4)
        assert [y - e for y, e in zip(values(t["y"]), values(t["error_y"]["arrayminus"]),
                                      strict=True)] == pytest.approx(lo, abs=1e-4)
    # the size chart: one bar per known model, its backbone parameter count
    (sizes,) = figures(tmp_path / "01_architecture", "Backbone parameters")
    (bar,) = sizes["data"]
    assert dict(zip(values(bar["x"]), values(bar["y"]), strict=True)) == m["parameters"]
    assert m["parameters"]["R50x1"] == 23_500_352 and len(m["parameters"]) >= 10
    assert sizes["layout"]["yaxis"]["type"] == "log"


#: lesson 01 at test size: 30 steps at batch 16, whole batch vs 2 images per device.
TEST01 = dict(train_size=300, val_size=100, test_size=200, steps=30, batch_size=16, micro_batch=2,
              lrs=[0.05, 0.1])


@pytest.mark.slow
def test_02_pretraining(shared_cache, tmp_path, monkeypatch):
    """The lesson's claims that a cheap setting shows: a longer schedule improves transfer and
    upstream accuracy; at the standard budget the bigger model does not help (it has more to
    train in the same steps); without weight decay the conv weights grow. Plus every figure
    against the numbers and the monitors' curves.

    Its own tiny upstream runs in an empty cache (so every run trains, live, with its monitor):
    two models x two sizes, 100 steps at batch 32, lr 0.1, a 3x run and a run without weight
    decay. Measured at these parameters over upstream seeds 0 / 1 / 2 (2026-12-02, 2-core CPU):
    3x minus 1x on 4,096 images: 1-shot +12.5 / +6.5 / +11.0 points, 10-shot +8.0 / +5.5 / -2.0
    (not robust, so not asserted), upstream top-1 +1.0 / +3.0 / +3.0; R26x0.25 minus R14x0.25 on
    4,096 images, 10-shot: -10.5 / -9.5 / -14.5; more data (512 -> 4,096) for R14x0.25, 10-shot:
    -4.5 / -3.0 / +7.5 (seed noise at this size: not asserted; the lesson quotes a reference
    run for it); conv weight norm without minus with decay: +0.14 / +0.11 / +0.13. Margins: 1-shot
    gain >= 3, model gain <= -3, norm difference >= 0.05. The test runs seed 0. Those seeds ran
    with one torch thread; ``make test`` (two threads, other float rounding) gave seed 0 a
    1-shot gain of +7.0, model gain -9.0, norm difference +0.10, and an upstream gain of 0.0:
    the upstream top-1 of 100-step runs (1-3% of 728 classes) is too noisy to assert.
    """
    monkeypatch.setenv("BITKIT_CACHE", str(tmp_path / "cache"))  # the kernel inherits it
    m = run("02_pretraining", tmp_path, solutions=True, **TEST02)
    models, sizes, k = TEST02["models"], TEST02["upstream_sizes"], "10"
    assert m["models"] == models and m["upstream_sizes"] == sizes and m["upstream_steps"] == 100
    assert m["upstream_lr"] == 0.1 and m["chance_top1"] == 5.0
    assert m["chance_upstream_top1"] == pytest.approx(100 / 728, abs=1e-5)  # 6 decimals kept
    grid = m["grid"]
    points = [grid[model][str(size)] for model in models for size in sizes]
    points += [m["schedule"]["3x"], *m["weight_decay"].values()]
    for p in points:
        assert 0 <= p["upstream_top1"] <= 100 and p["conv_weight_norm"] > 0
        assert set(p["linear"]) == {"1", "5", "10"}
        for shots, median in p["linear"].items():  # the median of the three few-shot seeds
            assert median == pytest.approx(sorted(p["linear_per_seed"][shots])[1], abs=1e-4)
        assert all(m["chance_top1"] < v <= 100 for v in p["linear"].values())  # signal
        assert p["linear"]["10"] > p["linear"]["1"]  # more shots help, for any feature extractor
    sched = m["schedule"]
    assert sched["model"] == models[0] and sched["upstream_size"] == max(sizes)
    assert sched["1x"]["steps"] == 100 and sched["3x"]["steps"] == 300
    assert sched["1x"]["upstream_top1"] == grid[models[0]][str(max(sizes))]["upstream_top1"]
    assert sched["gain"] == pytest.approx(sched["3x"]["linear"][k] - sched["1x"]["linear"][k],
                                          abs=1e-4)
    for model in models:
        assert m["data_gain"][model] == pytest.approx(
            grid[model][str(max(sizes))]["linear"][k] - grid[model][str(min(sizes))]["linear"][k],
            abs=1e-4)
    for size in sizes:
        assert m["model_gain"][str(size)] == pytest.approx(
            grid[models[-1]][str(size)]["linear"][k] - grid[models[0]][str(size)]["linear"][k],
            abs=1e-4)
    wd = m["weight_decay"]
    assert set(wd) == {"0.0001", "0"}  # BiT's 1e-4 is the grid run itself, reused from the cache
    assert wd["0.0001"] == grid[models[0]][str(max(sizes))]
    rule = m["rule_lr_run"]  # the same cell at BiT's rule lr (0.0075 at batch 32), judged alike
    assert set(rule["linear"]) == {"1", "5", "10"} and 0 <= rule["upstream_top1"] <= 100
    # the claims, margins measured over three upstream seeds (docstring)
    assert sched["3x"]["linear"]["1"] - sched["1x"]["linear"]["1"] >= 3  # longer helps transfer
    assert m["model_gain"][str(max(sizes))] <= -3  # standard budget: the bigger model lags
    assert wd["0"]["conv_weight_norm"] - wd["0.0001"]["conv_weight_norm"] >= 0.05  # norm grows
    # the self-check's answers are this run's
    answers = [q["answer"] for q in m["self_check"]]
    assert answers[0] == ("yes" if m["model_gain"][str(max(sizes))] > 0 else "no")
    assert answers[1] == ("yes" if sched["gain"] > 0 else "no")
    assert answers[3].startswith("the norm grows")
    out = tmp_path / "02_pretraining"
    # figure 1: a line per model and panel; the probe's medians with min-max whiskers
    (fig,) = figures(out, "Model size x upstream data size")
    panels = {"x": "linear", "x2": "upstream"}  # facet order: the probe first
    seen = set()
    for t in fig["data"]:
        model, panel = t["name"], panels[t.get("xaxis", "x")]
        seen.add((model, panel))
        assert values(t["x"]) == sizes
        ys = values(t["y"])
        cells = [grid[model][str(s)] for s in sizes]
        if panel == "linear":
            assert ys == pytest.approx([c["linear"][k] for c in cells], abs=1e-4)
            assert [y + e for y, e in zip(ys, values(t["error_y"]["array"]), strict=True)] == \
                pytest.approx([max(c["linear_per_seed"][k]) for c in cells], abs=1e-4)
            assert [y - e for y, e in zip(ys, values(t["error_y"]["arrayminus"]), strict=True)] == \
                pytest.approx([min(c["linear_per_seed"][k]) for c in cells], abs=1e-4)
        else:
            assert ys == pytest.approx([c["upstream_top1"] for c in cells], abs=1e-4)
    assert seen == {(model, p) for model in models for p in panels.values()}
    # figure 2: the standard budget on each size and the long one on the largest
    (fig,) = figures(out, f"{models[0]}: the standard budget vs 3x")
    bars = {t["name"]: dict(zip(values(t["x"]), values(t["y"]), strict=True))
            for t in fig["data"]}
    runs_ = [grid[models[0]][str(s)] for s in sizes] + [sched["3x"]]
    labels = [f"{s:,} images, 1x (100 steps)" for s in sizes] + [f"{max(sizes):,} images, 3x (300 steps)"]
    assert list(bars["world-objects: linear 10-shot (median)"]) == labels
    assert list(bars["world-objects: linear 10-shot (median)"].values()) == pytest.approx(
        [r["linear"][k] for r in runs_], abs=1e-4)
    assert list(bars["upstream val top-1"].values()) == pytest.approx(
        [r["upstream_top1"] for r in runs_], abs=1e-4)
    # figure 3: weight decay, the norm on the right axis
    (fig,) = figures(out, f"{models[0]} on {max(sizes):,} images, 100 steps: weight decay")
    by = {t["name"]: t for t in fig["data"]}
    norm = by["conv weight norm (right axis)"]
    assert norm["yaxis"] == "y2" and values(norm["x"]) == ["wd 0.0001", "wd 0"]
    assert values(norm["y"]) == pytest.approx([wd["0.0001"]["conv_weight_norm"],
                                               wd["0"]["conv_weight_norm"]], rel=1e-5)
    assert values(by["world-objects: linear 10-shot (%)"]["y"]) == pytest.approx(
        [wd["0.0001"]["linear"][k], wd["0"]["linear"][k]], abs=1e-4)
    # the training monitors: one static figure per run, its loss curve complete
    monitors = figures(out, "pre-training ")
    # trained here: the grid, the rule-lr run, the 3x run, the run without weight decay; the
    # solutions' wd 1e-3 and 1e-2 and the rule's lr on the small set. Exercise 3's rule-lr run
    # on the large set is the lesson's, loaded from the cache: its monitor replays the record
    assert len(monitors) == 2 * 2 + 3 + 3 + 1
    assert sum(f["layout"]["title"]["text"].endswith(" (cached: its recorded run)")
               for f in monitors) == 1
    for fig in monitors:
        steps = 300 if "300 steps" in fig["layout"]["title"]["text"] else 100
        loss = next(t for t in fig["data"] if t["name"] == "train loss")
        assert values(loss["x"])[-1] == steps and len(values(loss["x"])) == steps
    # the solution's loss curves: one per weight decay the kernel trained, every step
    (fig,) = figures(out, f"{models[0]} on {max(sizes):,} images: upstream training loss")
    assert sorted(t["name"] for t in fig["data"]) == sorted(["0", "0.0001", "0.001", "0.01"])
    assert all(len(values(t["x"])) == 100 for t in fig["data"])


#: lesson 02 at test size: tiny upstream runs, the probe on 300 downstream examples.
TEST02 = dict(models=["R14x0.25", "R26x0.25"], upstream_sizes=[512, 4096], upstream_steps=100,
              upstream_batch=32, longer=3, shots=[1, 5, 10], pool_size=500, test_size=200,
              val_size=200)


TRANSFER_TASKS = ["world-objects", "world-texture", "world-count", "digits"]
# transfer - scratch must exceed these (points) at the lesson's defaults; digits: "a tie", so
# |transfer - scratch| must stay below DIGITS_TIE (the lesson claims no gain there)
MARGINS03 = {"world-objects": 4, "world-texture": 1.5, "world-count": 2.5}
DIGITS_TIE = 4


def _recorded_gains(bench, table_start, column=3):
    """``{task: cell}`` of the transfer_defaults.py table whose header row starts with
    ``table_start``, from bench/README.md; ``column`` 3 is "600 - scratch", 4 "1,800 - scratch"."""
    record = bench.split("## transfer_defaults.py", 1)[1].split("\n## ", 1)[0]
    table = record.split(table_start, 1)[1].split("\n\n", 1)[0]
    return {name: cols[column].strip() for name, *cols in re.findall(
        r"^\| ([\w-]+) \([^)]*\) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$",
        table, re.MULTILINE) if name != "task"}  # not the header row


@pytest.mark.slow
def test_03_transfer(shared_cache, tmp_path):
    """Lesson 03 at its defaults (VTAB-1k's 800 training / 200 held-out images per task, 100
    steps, lrs 0.01/0.03/0.1, whole test splits), with its worked solutions.

    Claim: transfer beats scratch, each arm at the lr it chose on the same held-out training
    images, in each VTAB-like group of the world; on the real digits the two tie. Measured gains
    (test top-1 points) at these parameters, fine-tuning seeds 0, 1, 2 from the upstream model
    of seed 0 (bench/README.md, ``transfer_defaults.py``, 2026-12-03, world version 5):

        world-objects (natural)       +7.7   +5.4   +6.3   -> asserted > 4
        world-texture (specialized)   +5.7   +2.7   +5.2   -> asserted > 1.5
        world-count (structured)      +3.8  +10.5   +3.9   -> asserted > 2.5
        digits (real)                 +0.2   +0.2   +1.2   -> a tie: asserted |gain| < 4

    (digits over seeds 0-9: -2.6 to +1.6, mean +0.1). The lesson's run is seed 0 of that record,
    at the same parameters; the figure beside it shows the recorded seeds, checked here against
    bench/README.md (the prose quotes are checked by the test below). Cheaper parameters were
    measured and rejected: at test_size 300 with lrs 0.01/0.1 or 0.03/0.1 texture gave
    -1.3 / 0.0 / +1.3 and -1.3 / 0.0 / +4.7 (its transfer arm prefers lr 0.03, and 300 test
    images are noisier), no margin to assert.
    """
    out = tmp_path / "03_transfer"
    m = run("03_transfer", tmp_path, solutions=True)  # the lesson's defaults
    assert list(m["tasks"]) == TRANSFER_TASKS and m["processes"] == 1
    assert m["lrs"] == [0.01, 0.03, 0.1] and m["val_size"] == 200 and m["steps"] == 100
    groups = {"world-objects": "embedded-natural", "world-texture": "embedded-specialized",
              "world-count": "embedded-structured", "digits": "real-small"}
    for name, t in m["tasks"].items():
        assert t["group"] == groups[name] and t["train_size"] == 800, name
        assert t["transfer_lr"] in m["lrs"] and t["scratch_lr"] in m["lrs"], name
        assert t["transfer"] > t["chance"], name  # transfer learns every task
        assert t["paper BiT-L"] is None  # embedded and sklearn tasks: no paper number
        # the lesson's claim, per group, with margins measured over 3 seeds (docstring)
        gain = t["transfer"] - t["scratch"]
        assert (abs(gain) < DIGITS_TIE) if name == "digits" else (gain > MARGINS03[name]), name
    assert m["mean_transfer"] > m["mean_scratch"]
    # the chart's bars are the run's numbers, every task on its axis, side by side
    (fig,) = figures(out, "BiT-HyperRule transfer vs from scratch")
    assert fig["layout"]["barmode"] == "group"
    series = {t["name"]: dict(zip(values(t["x"]), values(t["y"]), strict=True))
              for t in fig["data"]}
    for name, key in (("from scratch (own lr)", "scratch"), ("BiT transfer", "transfer"),
                      ("chance", "chance")):
        assert list(series[name]) == TRANSFER_TASKS
        assert series[name] == pytest.approx({t: m["tasks"][t][key] for t in TRANSFER_TASKS},
                                             abs=1e-4)
    # the recorded seeds are bench/README.md's transfer_defaults.py record at these defaults, and
    # the figure shows this run's gains (bars) beside them (dots)
    bench = (NOTEBOOKS.parent / "bench" / "README.md").read_text()
    rec = m["recorded"]
    assert m["recorded_protocol"] is True  # the defaults are the recorded protocol
    assert set(rec) == set(TRANSFER_TASKS)
    recorded = _recorded_gains(bench, "| task (group) |")
    for name in TRANSFER_TASKS:
        assert " / ".join(f"{g:+.1f}" for g in rec[name]) == recorded[name], name
    (fig,) = figures(out, "Gain of transfer over scratch (each arm at its own lr)")
    mine, dots = fig["data"]
    assert mine["type"] == "bar" and values(mine["x"]) == TRANSFER_TASKS
    assert values(mine["y"]) == pytest.approx(
        [m["tasks"][t]["transfer"] - m["tasks"][t]["scratch"] for t in TRANSFER_TASKS], abs=1e-4)
    assert values(dots["x"]) == [t for t in TRANSFER_TASKS for _ in range(3)]
    assert values(dots["y"]) == pytest.approx([g for t in TRANSFER_TASKS for g in rec[t]])
    # the HyperRulePanel's static view: the rule for the first task at this run's size
    (fig,) = figures(out, "Learning rate: ")
    panel = m["hyperrule_panel"]
    assert panel == {"task": "world-objects", "train_size": 800, "steps": 500, "crop": 128,
                     "mixup": 0.0}
    assert fig["layout"]["title"]["text"].startswith("Learning rate: ")
    assert "500 steps" in fig["layout"]["title"]["text"]
    # the self-check's answers are this run's numbers
    key = {q["question"]: q["answer"] for q in m["self_check"]}
    gains = {t: r["transfer"] - r["scratch"] for t, r in m["tasks"].items()}
    assert key["In your run, on how many of the compared tasks did transfer beat scratch (each "
               "arm at its own lr)?"] == str(sum(g > 0 for g in gains.values()))
    assert key["In your run, which task gained most from transfer?"] == max(gains, key=gains.get)
    # the worked solutions ran in the lesson's kernel
    ex = m["exercises"]
    assert ex["longer"]["task"] == "world-objects" and ex["longer"]["steps"] == 500
    assert 0 <= ex["longer"]["transfer"] <= 100 and 0 <= ex["longer"]["scratch"] <= 100
    assert ex["orientation"]["flip_card"] is False and ex["orientation"]["flip_forced"] is True
    assert ex["groupnorm_relative_difference"] < 1e-4  # 2 x 32 is the update of 1 x 64
    few = ex["fewer"]
    assert few["task"] == "world-texture" and few["train_size"] == 100
    assert 0 <= few["transfer"] <= 100 and 0 <= few["scratch"] <= 100
    # a parameter other than the record's is named beside the recorded seeds
    m = run("03_transfer", tmp_path / "short", tasks=["digits"], train_size=100, val_size=50,
            steps=5, lrs=[0.1], test_size=50)
    assert m["recorded_protocol"] is False
    (executed,) = (tmp_path / "short" / "03_transfer").glob("*.ipynb")
    assert "Not the recorded protocol: your run differs in train_size=100 (recorded 800)" in \
        executed.read_text()


@pytest.mark.slow
def test_04_few_shot(shared_cache, tmp_path):
    """The few-shot claims, with the worked solutions run after the lesson.

    Measured at these parameters (test_size 400, 20 fine-tuning steps) over 3 draws of the
    subset seeds (seeds = finetune_seeds = [0, 1, 2], [3, 4, 5], [6, 7, 8]; 2 Dec 2026):

    - more shots help: 5-shot minus 1-shot probe median 7.5, 22.75, 17.0 -> asserted > 3;
    - pre-trained minus random features (probe medians) at 1 / 5 shots: 38.75 / 30.5,
      22.25 / 29.25, 24.75 / 27.5 -> asserted > 15 at both;
    - fine-tuned 1-shot median minus the random-feature probe: 36.25, 27.5, 25.0 -> asserted
      > 15 (minus chance: 45.25, 35.5, 35.75 -> > 20).

    Not asserted, because not stable over draws: fine-tuning minus the probe on the same 1-shot
    subsets (-2.25, +6.75, -0.75; the lesson prints its own sign), and "the spread is widest at
    k = 1" (1-shot vs 5-shot min-max 9.5 vs 3.5, 13.75 vs 3.5, 2.25 vs 5.0; with 5 seeds
    32.0 vs 5.5, 5.0 vs 5.75, 16.75 vs 6.75): the self-check asks the run's own answer.
    """
    import statistics

    m = run("04_few_shot", tmp_path, solutions=True, **UPSTREAM, shots=[1, 5], seeds=[0, 1, 2],
            finetune_shots=[1], finetune_seeds=[0, 1, 2], finetune_steps=20, test_size=400)
    up, rnd = m["linear_upstream"], m["linear_random"]
    assert set(up) == set(rnd) == {"1", "5"} and m["seeds"] == 3
    assert up["5"] - up["1"] > 3  # more shots help
    assert up["1"] - rnd["1"] > 15 and up["5"] - rnd["5"] > 15  # pre-trained beat random features
    ft1 = m["finetuned_upstream"]["1"]
    assert ft1 - rnd["1"] > 15 and ft1 - m["chance_top1"] > 20  # fine-tuning transfers 1-shot
    # the numbers agree with each other: medians and spreads of the per-seed values
    for k in ("1", "5"):
        per_seed = m["linear_upstream_per_seed"][k]
        assert up[k] == pytest.approx(statistics.median(per_seed), abs=1e-4)
        assert m["linear_upstream_spread"][k] == pytest.approx(max(per_seed) - min(per_seed),
                                                               abs=1e-4)
        assert m["upstream_minus_random"][k] == pytest.approx(up[k] - rnd[k], abs=1e-4)
    # fine-tuning and the probe ran on the same subsets: the probe's column is its own per-seed
    assert m["probe_same_subsets"]["1"] == m["linear_upstream_per_seed"]["1"]
    ft = m["finetuned_per_seed"]["1"]
    assert len(ft) == 3 and m["finetune_steps"] == {"1": 20}
    assert m["finetuned_upstream"]["1"] == pytest.approx(statistics.median(ft), abs=1e-4)
    assert m["finetune_minus_probe"]["1"] == pytest.approx(
        statistics.median([f - p for f, p in zip(ft, m["probe_same_subsets"]["1"], strict=True)]),
        abs=1e-4)
    # the self-check's answers are this run's
    def answer(start):
        (found,) = [q["answer"] for q in m["self_check"] if q["question"].startswith(start)]
        return found

    spread = m["linear_upstream_spread"]
    assert answer("In your run, at which k") == f"{max(spread, key=spread.get)}-shot"
    assert answer("In your run, did fine-tuning beat") == \
        ("yes" if m["finetune_minus_probe"]["1"] > 0 else "no")
    out = tmp_path / "04_few_shot"
    # the curves are the run's medians, with min-max bars that match its spread
    (fig,) = figures(out, "Few-shot top-1 on world-objects")
    curves = {t["name"]: t for t in fig["data"] if t.get("name")}
    for name, key in (("linear, BiT upstream (median)", "linear_upstream"),
                      ("linear, random init (median)", "linear_random")):
        assert values(curves[name]["x"]) == [1, 5]
        assert values(curves[name]["y"]) == pytest.approx([m[key]["1"], m[key]["5"]], abs=1e-4)
        bars = curves[name]["error_y"]
        width = [a + b for a, b in zip(values(bars["array"]), values(bars["arrayminus"]),
                                       strict=True)]
        assert width == pytest.approx([m[f"{key}_spread"][k] for k in ("1", "5")], abs=1e-4)
    star = curves["fine-tuned, BiT upstream (median)"]
    assert values(star["x"]) == [1]
    assert values(star["y"]) == pytest.approx([m["finetuned_upstream"]["1"]], abs=1e-4)
    assert values(star["error_y"]["array"])[0] + values(star["error_y"]["arrayminus"])[0] == \
        pytest.approx(max(ft) - min(ft), abs=1e-4)
    dots = curves["fine-tuned, each seed"]
    assert values(dots["x"]) == [1, 1, 1] and values(dots["y"]) == pytest.approx(ft, abs=1e-4)
    assert fig["layout"]["xaxis"]["title"]["text"] and fig["layout"]["yaxis"]["title"]["text"]
    # the paired figure: one point per subset, x the probe, y fine-tuning, on the same seeds
    (pairs,) = figures(out, "Same subsets: fine-tuned vs linear probe")
    (one,) = [t for t in pairs["data"] if t["name"] == "1-shot"]
    assert values(one["x"]) == pytest.approx(m["probe_same_subsets"]["1"], abs=1e-4)
    assert values(one["y"]) == pytest.approx(ft, abs=1e-4)
    assert [t["name"] for t in pairs["data"]] == ["1-shot", "equal"]
    # the FewShotExplorer's static view: its table holds the run's medians and spreads
    (executed,) = out.glob("*.ipynb")
    html = [o["data"]["text/html"] for c in nbformat.read(str(executed), as_version=4).cells
            if c.cell_type == "code" for o in c.outputs
            if "Few-shot subsets (static copy)" in o.get("data", {}).get("text/html", "")]
    assert len(html) == 1 and html[0].count("<img") == 10  # 1-shot, seed 0: first 10 classes
    for k in ("1", "5"):
        assert f"{up[k]:.1f}%" in html[0]
    # ... and its figure (an output of its own in the saved copy): the same medians and seeds
    (panel,) = figures(out, "Linear few-shot accuracy vs k (3 seeds)")
    traces = {t["name"]: t for t in panel["data"]}
    assert values(traces["median"]["x"]) == [1, 5]
    assert values(traces["median"]["y"]) == pytest.approx([up["1"], up["5"]], abs=1e-4)
    assert values(traces["each seed"]["y"]) == pytest.approx(
        m["linear_upstream_per_seed"]["1"] + m["linear_upstream_per_seed"]["5"], abs=1e-4)
    assert values(traces["this k and seed"]["y"]) == pytest.approx(
        [m["linear_upstream_per_seed"]["1"][0]], abs=1e-4)  # the view shows k = 1, seed 0
    # the worked solutions ran, in the lesson's kernel, and printed what their prose discusses
    text = "".join(o.get("text", "") for c in nbformat.read(str(executed), as_version=4).cells
                   if c.cell_type == "code" for o in c.outputs)
    assert "1-shot, median of the first 20 seeds" in text
    assert "subsets are nested" in text and "instead of 2^10" in text


def test_05_takes_the_random_search_trials_of_bitkit_sweep():
    # `bitkit sweep notebooks/05_vtab.ipynb --search N` passes each trial's numbers as parameters
    nb = NOTEBOOKS / "05_vtab.ipynb"
    for trial in runs.search_trials(6, steps_scale=0.01):
        assert runs.resolve_parameters(nb, trial) == trial


def test_02_reference_table_is_the_bench_record():
    """Lesson 02's reference table is bench/README.md's pretraining_effects.py record, row for
    row, and its prose quotes the gains that table gives."""
    bench = (NOTEBOOKS.parent / "bench" / "README.md").read_text()
    record = bench.split("## pretraining_effects.py", 1)[1].split("\n## ", 1)[0]
    row = re.compile(r"^\| R\d+x[\d.]+ \| .+ \|$", re.MULTILINE)
    rows = row.findall(record)
    lesson = "".join(c.source for c in _cells(NOTEBOOKS / "02_pretraining.ipynb"))
    assert len(rows) == 12 and row.findall(lesson) == rows
    cols = {tuple(c.strip() for c in r.strip("|").split("|")[:3]):
            [float(c.split()[0]) for c in r.strip("|").split("|")[3:]] for r in rows}
    up, one, ten = ({k: v[i] for k, v in cols.items()} for i in (0, 1, 3))
    text = " ".join(lesson.split())
    long_ = lambda m, n: (m, n, "1,800")  # noqa: E731
    small, deep, wide = "R14x0.25", "R26x0.25", "R26x0.5"
    gain = one[long_(deep, "50,000")] - one[long_(deep, "5,000")]
    assert f"+{gain:.1f} points 1-shot" in text
    lag = one[long_(small, "50,000")] - one[long_(deep, "50,000")]
    assert f"trails R14x0.25 by {lag:.1f} points 1-shot" in text
    lead = [d[long_(wide, "50,000")] - d[long_(small, "50,000")] for d in (up, one, ten)]
    assert "R26x0.5 leads R14x0.25 by +{:.1f} points upstream and +{:.1f} 1-shot, +{:.1f} " \
           "10-shot".format(*lead) in text and min(lead) > 0
    assert f"trails by {ten[long_(small, '5,000')] - ten[long_(wide, '5,000')]:.1f}" in text


def test_03_quotes_its_defaults_as_recorded_in_bench():
    """Lesson 03's prose gains are bench/README.md's transfer_defaults.py records: its defaults
    (800 images), lesson 02's longer model at those defaults, and the earlier 100 images."""
    bench = (NOTEBOOKS.parent / "bench" / "README.md").read_text()
    at_800 = _recorded_gains(bench, "| task (group) |")
    at_100 = _recorded_gains(bench, "| task (group), 100 images |")
    assert set(at_800) == set(at_100) == set(TRANSFER_TASKS)
    text = " ".join("".join(c.source for c in _cells(NOTEBOOKS / "03_transfer.ipynb")).split())
    assert (f"world-objects {at_800['world-objects']} points, world-texture "
            f"{at_800['world-texture']}, world-count {at_800['world-count']}. On digits it was "
            f"ahead by {at_800['digits']}") in text
    for name in ("world-objects", "world-texture", "world-count"):  # "at every recorded seed"
        assert all(float(g) > 0 for g in at_800[name].split(" / ")), name
    assert (f"texture {at_100['world-texture']}, counting {at_100['world-count']}, digits "
            f"{at_100['digits']}") in text
    # the longer model's column at the defaults: the ranges and the digits seeds the lesson quotes
    longer = {name: [float(g) for g in cell.split(" / ")]
              for name, cell in _recorded_gains(bench, "| task (group) |", column=4).items()}
    for name, label in (("world-objects", "objects"), ("world-count", "counting")):
        lo, hi = min(longer[name]), max(longer[name])
        assert f"{label} (+{lo:.1f} to +{hi:.1f})" in text, name
    assert "digits stayed a tie (" + " / ".join(f"{g:+.1f}" for g in longer["digits"]) + ")" in text
    # "over ten seeds the gain averaged +0.1": the ten-seed digits line of the record
    record = bench.split("## transfer_defaults.py", 1)[1].split("### ", 1)[0]
    ten = re.search(r"the gains were ([-+\d. /\n]+),\s+mean ([-+\d.]+)", record)
    gains = [float(g) for g in " ".join(ten[1].split()).split(" / ")]
    assert len(gains) == 10 and f"{sum(gains) / 10:+.1f}" == ten[2].rstrip(".,") == "+0.1"
    assert "over ten seeds the gain averaged +0.1" in text
    assert sum(g < -2 for g in gains) == 2 and "two seeds behind by more than 2 points" in text


def test_05_quotes_its_defaults_as_recorded_in_bench():
    """Lesson 05's prose numbers are bench/README.md's recorded runs of its defaults."""
    bench = (NOTEBOOKS.parent / "bench" / "README.md").read_text()
    rows = re.findall(r"^\| (\d) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| [+-][\d.]+ \| ([+-][\d.]+) \|$",
                      bench.split("## Lesson 05 at its defaults", 1)[1].split("\n## ", 1)[0],
                      re.MULTILINE)
    assert [r[0] for r in rows] == ["0", "1", "2"]
    text = " ".join("".join(c.source for c in _cells(NOTEBOOKS / "05_vtab.ipynb")).split())
    compressed, own = {r[1] for r in rows}, {r[2] for r in rows}
    assert len(compressed) == len(own) == 1  # the rule does not depend on the search seed
    compressed_rule, own_rule = compressed.pop(), own.pop()
    searches = " / ".join(r[3] for r in rows)
    assert (f"the compressed rule scored {compressed_rule} and the search {searches}; the rule "
            f"with its own 500 steps scored {own_rule}, {rows[0][4].lstrip('+')} points behind "
            "the search at seed 0 and ahead at seeds 1 and 2") in text
    assert [float(r[4]) > 0 for r in rows] == [True, False, False]
    # the per-task numbers at seed 0, rule with its own steps against the search
    record = " ".join(bench.split("## Lesson 05 at its defaults", 1)[1].split("\n## ", 1)[0].split())
    per_task = re.search(r"world-objects ([\d.]+) vs ([\d.]+), world-texture ([\d.]+) vs ([\d.]+), "
                         r"world-count ([\d.]+) vs ([\d.]+):", record).groups()
    assert ("natural task ({} against {}) and the specialised one ({} against {}) and trailed on "
            "the structured one ({} against {})").format(*per_task) in text
    lead = [float(f) - float(o) for o, f in zip(per_task[::2], per_task[1::2], strict=True)]
    assert abs(lead[0]) < 1 and abs(lead[1]) < 1 and lead[2] > 5  # "tied ... trailed"
    # the rule alone at more of its schedule: the lesson quotes the record's means, which rise
    curve = re.findall(r"^\| [\d.]+(?: \([\w ]+\))? \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| "
                       r"([\d.]+) \|$",
                       bench.split("**How many steps the rule needs.**", 1)[1].split("\n\n**", 1)[0],
                       re.MULTILINE)
    steps = [int(row[0]) for row in curve]
    columns = [[float(row[i]) for row in curve] for i in (1, 2, 3, 4)]  # 3 tasks, then the mean
    assert steps == [5, 50, 100, 150, 250, 500]
    assert all(col == sorted(col) for col in columns)  # "gains at every step ... on every task"
    assert columns[3][0] == float(compressed_rule) and columns[3][-1] == float(own_rule)
    assert "scored {}, {}, {} and {} at 50, 100, 150 and 250 steps".format(
        *(row[4] for row in curve[1:5])) in text


def test_05_vtab_split_is_official_or_random(tmp_path):
    with pytest.raises(runs.NotebookFailed) as e:  # checked before any data or model
        runs.run_notebook(NOTEBOOKS / "05_vtab.ipynb", {"vtab_split": "first"}, tmp_path / "bad",
                          log_output=False)
    assert e.value.cell is not None and e.value.cell <= 3
    assert ("parameter vtab_split = 'first': must be 'official' (VTAB-1k's own slices) or "
            "'random' (a seeded 800/200)") in e.value.error


@pytest.mark.slow
def test_05_vtab(shared_cache, tmp_path):
    """The search against BiT-HyperRule, both compressed alike, with the worked solutions.

    Parameters: 2 tasks (natural, structured), 2 trials, steps_scale 0.01 (the rule 5 steps,
    trials 500..16000 -> 5..160), resolution_scale 0.0625, batch 16, 200 test images.
    Measured over 3 search seeds (search_seed 0, 1, 2: the trials drawn; 2 Dec 2026):

    - the search minus the rule compressed like the trials (VTAB-style mean): 23.75, 4.75,
      12.5 -> asserted > 2: under the same compression, the search wins;
    - the search minus the rule with its own 500 steps: 5.0, -14.0, -6.25 with one torch
      thread, 10.5 at search seed 0 in ``make test`` (two threads: other float rounding, and 200
      test images make a point 0.5%) -> asserted < 12: with the schedule it was made for, the
      rule is within about ten points of the search or ahead (supplementary A finds a few
      points at full scale);
    - the rule's own 500 steps minus its compressed 5: 18.75 at every seed (the rule does not
      depend on the search seed) -> asserted > 10.

    Not asserted: which rule comes closer to the search (the own schedule at seeds 0 and 2, the
    compressed one at seed 1; the self-check asks the run's own answer), and the search's cost
    relative to the rule's own schedule (5.8x, 0.9x, 0.4x: two of these trials are cheap draws).
    """
    tasks = ["world-objects", "world-count"]
    m = run("05_vtab", tmp_path, solutions=True, **UPSTREAM, tasks=tasks, trials=2,
            steps_scale=0.01, resolution_scale=0.0625, batch_size=16, test_size=200)
    assert list(m["tasks"]) == tasks and m["trials"] == 2
    # the rule is compressed exactly like the trials: 500 x 0.01 steps, 128 x 0.0625 pixels
    assert m["hyperrule_steps"] == 5 and m["hyperrule_crop"] == max(8, round(128 * 0.0625))
    assert m["trial_steps"] == [max(5, round(t["steps"] * 0.01))
                                for t in runs.search_trials(2)]
    assert m["trial_crops"] == [max(8, round(t["resolution"] * 0.0625))
                                for t in runs.search_trials(2)]
    # VTAB-1k's split by default, VTAB's most common rule on the stand-ins (the cards' vtab_splits)
    assert m["vtab_split"] == "official"
    for name, t in m["tasks"].items():
        assert t["split"] == {"train800": "train[:800]", "val200": "train[800:1000]",
                              "train800val200": "train[:800]+train[800:1000]", "test": "test"}
        assert t["positions"] == {"train800": [0, 799, 800], "val200": [800, 999, 200],
                                  "train1000": [0, 999, 1000]}, name  # (first, last, count)
        assert [r["trial"] for r in t["trials"]] == [0, 1], name  # SearchSpace trials 0 and 1
        assert all(0 <= r[k] <= 100 for r in t["trials"] for k in ("val", "test")), name
        best = max(t["trials"], key=lambda r: r["val"])  # selected on val200, never on test
        assert t["best_val"] == best["val"] and t["best_trial"] == best["trial"], name
        assert t["cost_vs_hyperrule"] > t["own_cost_vs_hyperrule"] == 100, name  # 500 / 5 steps
    assert set(m["groups"]) == {"natural", "structured"}
    for key in ("hyperrule", "hyperrule_own", "search"):
        assert m[f"vtab_{key}"] == pytest.approx(
            sum(t[key] for t in m["tasks"].values()) / 2, abs=1e-3)
    assert m["search_minus_hyperrule"] == pytest.approx(m["vtab_search"] - m["vtab_hyperrule"],
                                                        abs=1e-3)
    assert m["search_minus_hyperrule"] > 2  # the same compression: the search wins
    assert m["search_minus_hyperrule_own"] < 12  # the rule's own schedule: close, or ahead
    assert m["vtab_hyperrule_own"] - m["vtab_hyperrule"] > 10  # compression starves the rule
    curve = m["curve"]
    assert curve["trials"] == [1, 2]
    assert curve["val"][1] >= curve["val"][0]  # best-so-far on val200 can only go up
    # the self-check's answers are this run's
    def answer(start):
        (found,) = [q["answer"] for q in m["self_check"] if q["question"].startswith(start)]
        return found

    assert answer("In your run, with the same compression") == \
        ("yes" if m["search_minus_hyperrule"] > 5 else "no")
    closer = abs(m["search_minus_hyperrule_own"]) < abs(m["search_minus_hyperrule"])
    assert answer("In your run, which BiT-HyperRule came closer") == \
        ("its own 500 steps" if closer else "compressed like the trials")
    assert answer("Which split chooses the winning trial?") == "val200"
    out = tmp_path / "05_vtab"
    # the bar figure: one bar per task and method, heights = the run's accuracies
    (bars,) = figures(out, "VTAB-1k protocol per group")
    methods = {"BiT-HyperRule, compressed like the trials": "hyperrule",
               "BiT-HyperRule, own 500 steps": "hyperrule_own",
               "best of 2 trial(s) on val200, retrained": "search", "chance": "chance"}
    seen = {}
    for trace in bars["data"]:
        for task, height in zip(values(trace["x"]), values(trace["y"]), strict=True):
            seen[(trace["name"], task)] = height
    assert seen == pytest.approx({(name, task): m["tasks"][task][key]
                                  for name, key in methods.items() for task in tasks}, abs=1e-4)
    assert bars["layout"]["yaxis"]["title"]["text"] == "top-1 (%)"
    # the trials curve: the run's curve, and the rule's two scores as reference lines
    (fig,) = figures(out, "Score vs number of random-search trials")
    lines = {t["name"]: t for t in fig["data"]}
    test_line = lines["test, selected on val200 (mean over tasks)"]
    assert values(test_line["x"]) == [1, 2]
    assert values(test_line["y"]) == pytest.approx(curve["test"], abs=1e-4)
    assert values(lines["val200 of the selected"]["y"]) == pytest.approx(curve["val"], abs=1e-4)
    levels = sorted(s["y0"] for s in fig["layout"]["shapes"])
    assert levels == pytest.approx(sorted([m["vtab_hyperrule"], m["vtab_hyperrule_own"]]),
                                   abs=1e-4)
    # the worked solutions ran on this run's trials (one scatter figure, their printed lines)
    (scatter,) = figures(out, "Each trial's val200 against its lr")
    assert sorted(v for t in scatter["data"] for v in values(t["y"])) == pytest.approx(
        sorted(r["val"] for t in m["tasks"].values() for r in t["trials"]), abs=1e-4)
    (executed,) = out.glob("*.ipynb")
    text = "".join(o.get("text", "") for c in nbformat.read(str(executed), as_version=4).cells
                   if c.cell_type == "code" for o in c.outputs)
    assert "val200 picks trial" in text and "from 1 to 2 trials" in text


@pytest.mark.slow
def test_05_vtab_random_split_is_a_named_option(shared_cache, tmp_path):
    m = run("05_vtab", tmp_path, **UPSTREAM, tasks=["world-count"], trials=1, steps_scale=0.001,
            resolution_scale=0.0625, rule_own_schedule=False, batch_size=16, test_size=50,
            vtab_split="random")
    assert m["vtab_split"] == "random"
    t = m["tasks"]["world-count"]
    assert t["split"]["train800"] == "800 random of train (seed 0)"  # seed also seeds upstream
    first, last, n = t["positions"]["train800"]
    assert n == 800 and last - first + 1 > 800  # a random 800 of the 2000, not the first 800
    assert t["positions"]["val200"][2] == 200 and t["positions"]["train1000"][2] == 1000


@pytest.mark.slow
def test_06_error_browser(shared_cache, tmp_path):
    """Lesson 06 at its defaults (world-objects-noisy, train_size=2000, steps=300, the whole
    test set of 1000 with its 55 planted label errors, top_k=20), worked solutions included.

    The claim: the model's most confident mistakes are enriched in planted label errors, and
    its highest-loss mistakes more so. Measured over seeds 0, 1, 2 (the lesson's ``seed``: upstream
    model and fine-tuning) on 2026-12-03 with today's upstream models (a 2026-12-02 record came
    from an earlier build), share of planted errors among the 20 top mistakes: top-1
    74.7 / 70.7 / 75.2%; base rate (among all mistakes) 0.209 / 0.181 / 0.218; most confident
    first 0.45 / 0.50 / 0.70 (2.15x / 2.76x / 3.21x the base rate, +0.24 / +0.32 / +0.48);
    highest loss first 0.90 / 0.80 / 0.80 (4.30x / 4.42x / 3.67x, +0.69 / +0.62 / +0.58; loss -
    confidence +0.45 / +0.30 / +0.10); true-label minus given-label top-1 +4.0 / +3.6 / +4.0
    points. Margins: confidence >= 1.5x and >= base + 0.10, loss >= 3x and >= base + 0.40, loss
    >= confidence (its lowest lead is 2 of 20 mistakes), true-label top-1 >= given + 2 points.
    Cost: the fine-tuning takes about 21 CPU-seconds, the whole run about 40 (168 s wall with
    the machine at load 20).
    """
    m = run("06_error_browser", tmp_path, solutions=True, **UPSTREAM)
    assert m["task"] == "world-objects-noisy" and m["test_size"] == 1000 and m["steps"] == 300
    assert m["train_size"] == 2000 and m["top_k"] == 20
    assert m["mistakes"] == round(1000 * (1 - m["top1"] / 100))
    assert 15 < m["top1"] <= m["top5"] <= 100  # chance is 5%
    assert m["hardest_class_accuracy"] <= m["top1"] <= m["easiest_class_accuracy"]
    assert m["most_confused"]["count"] >= 1
    assert m["review"] == {"model right": 0, "label right": 0, "unsure": 0, "both wrong": 0}
    # the planted truth: the card's 55 label errors, nearly all of them among the mistakes
    from bitkit.data.world import label_errors

    assert m["planted"] == len(label_errors("world-objects-noisy")) == 55
    score = m["review_score"]
    assert score["planted"] == 55 and score["found"] == score["reviewed"] == 0
    assert score["remaining"] == score["in_mistakes"] >= 50
    assert m["base_rate"] == pytest.approx(score["in_mistakes"] / m["mistakes"], abs=1e-6)
    # the lesson's claim, with margins measured over seeds 0-2 (docstring)
    base, conf, loss = m["base_rate"], m["share_confident"], m["share_loss"]
    assert conf >= 1.5 * base and conf >= base + 0.10
    assert loss >= 3 * base and loss >= base + 0.40
    assert loss >= conf
    assert m["true_top1"] >= m["top1"] + 2  # label errors hide part of what the model gets right
    # the simulated reviewer, scored by the panel, agrees with the lesson's own count
    for key, share in (("confidence", conf), ("loss", loss)):
        demo = m["demo"][key]
        assert demo["model_right"] == 20 and demo["found"] == round(20 * share)
        assert demo["false_alarms"] == 20 - demo["found"] and demo["model_right_correct"] <= demo["found"]
    # the self-check's run-dependent answers are this run's
    ratio = conf / base
    band = ("more than twice the base rate" if ratio > 2 else "up to twice the base rate"
            if ratio >= 1.25 else "about the base rate or lower")
    key = m["self_check"]
    assert key[0]["answer"] == band and key[1]["answer"] == "highest loss first"
    assert 2 <= len(key) <= 4
    # the figures show every class, names in full, and the numbers the lesson computed
    from bitkit import data

    out = tmp_path / "06_error_browser"
    names = list(data.load("world-objects-noisy", "test").class_names)
    (bars,) = figures(out, "Per-class test accuracy")
    (trace,) = bars["data"]
    assert sorted(values(trace["y"])) == sorted(names) and trace["orientation"] == "h"
    acc = values(trace["x"])
    assert acc == sorted(acc) and acc[0] == pytest.approx(m["hardest_class_accuracy"] / 100)
    assert acc[-1] == pytest.approx(m["easiest_class_accuracy"] / 100)
    assert bars["layout"]["height"] >= 22 * len(names)  # a readable row per class
    executed = (out / "06_error_browser.ipynb").read_text()
    assert "Mistakes (static copy of the error browser)" in executed  # the panel, reopened
    assert "planted label errors among the mistakes" in executed  # ... with its score
    (cm,) = figures(out, "Confusion matrix")
    assert values(cm["data"][0]["x"]) == values(cm["data"][0]["y"]) == names
    assert cm["layout"]["xaxis"]["dtick"] == 1  # every label shown
    (ranked,) = figures(out, "Planted label errors among the k top-ranked mistakes")
    by_name = {t["name"]: t for t in ranked["data"]}
    assert set(by_name) == {"most confident first", "highest loss first",
                            "all mistakes (base rate)", "k = 20"}
    k_axis = list(range(1, m["mistakes"] + 1))
    for name, key in (("most confident first", "confidence"), ("highest loss first", "loss")):
        curve = values(by_name[name]["y"])
        assert values(by_name[name]["x"]) == k_axis
        assert curve == pytest.approx(m["curves"][key], abs=1e-6)
        assert curve[19] == pytest.approx(m[f"share_{'confident' if key == 'confidence' else key}"])
        assert curve[-1] == pytest.approx(base)  # all mistakes: every ranking the same set
    assert values(by_name["all mistakes (base rate)"]["y"]) == pytest.approx([base, base])
    assert values(by_name["k = 20"]["x"]) == [20, 20]
    assert values(by_name["k = 20"]["y"]) == pytest.approx([conf, loss])
    layout = ranked["layout"]
    assert layout["xaxis"]["title"]["text"] and layout["yaxis"]["title"]["text"]
    assert layout["yaxis"]["range"][0] == 0 and layout["yaxis"]["range"][1] >= 1
    # the worked solutions ran: the rule, the reliability diagram, the weaker model
    assert "the rule marks" in executed and "weak: " in executed
    assert "under-confident by" in executed or "over-confident by" in executed
    (reliability,) = figures(out, "Reliability diagram")
    assert all(0 <= y <= 1 for y in values(reliability["data"][0]["y"]))


@pytest.mark.slow
def test_07_duplicates(shared_cache, tmp_path):
    """The lesson's own model and search at the fixed threshold, on two host test sets, with its
    worked solutions; every figure is checked against the numbers the lesson computed.

    Measured with these parameters over seeds 0, 1, 2 (the upstream model's and fine-tuning's
    seed; the world and its planted pairs are fixed), 2 Dec 2026, with the ratio-test reading
    of the scores: world-objects recall 1.0 at every seed, precision 1.0 (40 found, one
    look-alike); world-count 39 / 39 / 38 of 40 found, precision 1.0; the cosine search at its
    best threshold (0.98 every seed, picked with the truth) precision 0.50 / 0.18 / 0.55, recall
    0.10 / 0.15 / 0.15; Full - Dedup +0.2 / +0.3 / -0.2 (world-objects) and -0.4 / -0.2 / -0.3
    (world-count) points. Margins: headline recall >= 0.95 (0.05 below the lowest), per-task
    found >= 0.925 (0.025 below the lowest), precision >= 0.9, cosine precision and recall < 0.7
    (0.15 above the highest), |Full - Dedup| < 3 points."""
    params = dict(search_size=5000, train_size=300, steps=40,
                  tasks=["world-objects", "world-count"])
    m = run("07_duplicates", tmp_path, solutions=True, **UPSTREAM, **params)
    assert m["planted"] == 40 and m["threshold"] == 0.95  # fixed, not picked on the truth
    assert m["recall"] >= 0.95 and m["precision"] >= 0.9
    assert m["cosine_precision"] < 0.7 and m["cosine_recall"] < 0.7
    for name, t in m["tasks"].items():
        assert t["planted"] == 40 and t["test_size"] == 1000
        assert t["found"] + t["missed"] == t["planted"]
        assert t["found"] / t["planted"] >= 0.925, (name, t)
        flagged = t["found"] + t["look_alikes"] + t["false_positives"]
        assert (t["found"] + t["look_alikes"]) / flagged >= 0.9, (name, t)
        assert 1 <= t["dups"] <= flagged  # Table 1's Dups: test images with a flagged pair
        assert abs(t["full"] - t["dedup"]) < 3  # supplementary B: duplicates barely move it
    out = tmp_path / "07_duplicates"
    # the DuplicateInspector's static view, reopened without a kernel: its counts are the run's
    executed = (out / "07_duplicates.ipynb").read_text()
    assert "Near-duplicates (static copy, view: " in executed
    objects = m["tasks"]["world-objects"]
    for count, kind in ((objects["found"], "found"), (objects["missed"], "missed"),
                        (objects["false_positives"], "false positives")):
        assert re.search(rf">{count} {kind}</span>", executed), (count, kind)

    # figure 1: the bars of each kind are the counts of the table (every task, every kind)
    (kinds,) = figures(out, "Flagged pairs by kind")
    labels = {"planted, found": "found", "look-alike": "look_alikes",
              "false positive": "false_positives", "planted, missed": "missed"}
    assert [tr["name"] for tr in kinds["data"]] == list(labels)
    for tr in kinds["data"]:
        assert values(tr["x"]) == params["tasks"]
        assert values(tr["y"]) == [m["tasks"][n][labels[tr["name"]]] for n in params["tasks"]]
    # figure 2: the curves are the sweeps the lesson saved; at the red line they give the
    # headline precision and recall
    (pr,) = figures(out, "world-objects: precision and recall against the 40 planted pairs")
    assert pr["layout"]["shapes"][0]["x0"] == m["threshold"]
    assert len(pr["data"]) == 4
    for tr in pr["data"]:
        method, metric = tr["name"].split(": ")
        curve = m["curves"][method]
        kept = [(x, y) for x, y in zip(curve["threshold"], curve[metric], strict=True) if y is not None]
        assert values(tr["x"]) == pytest.approx([x for x, _ in kept])
        assert values(tr["y"]) == pytest.approx([y for _, y in kept], abs=1e-6)  # 6 decimals kept
    fixed = dict(zip(m["curves"]["pixel score (verified)"]["threshold"],
                     m["curves"]["pixel score (verified)"]["precision"], strict=True))
    assert fixed[m["threshold"]] == pytest.approx(m["precision"])
    cos = m["curves"]["cosine of pre-logits"]
    at = cos["threshold"].index(m["cosine_best_threshold"])
    assert (cos["precision"][at], cos["recall"][at]) == pytest.approx(
        (m["cosine_precision"], m["cosine_recall"]))
    # figure 3: Full and Dedup bars are the table's accuracies; each category names its Dups
    (table,) = figures(out, "Full vs Dedup test top-1")
    assert [tr["name"] for tr in table["data"]] == ["Full", "Dedup"]
    for tr in table["data"]:
        assert values(tr["x"]) == params["tasks"]
        assert values(tr["y"]) == pytest.approx(
            [m["tasks"][n][tr["name"].lower()] for n in params["tasks"]], abs=1e-4)
    ticks = table["layout"]["xaxis"]["ticktext"]
    assert [t.split("<br>")[0] for t in ticks] == params["tasks"]
    assert all(f"Dups {m['tasks'][n]['dups']} of 1000" in t
               for n, t in zip(params["tasks"], ticks, strict=True))

    # the self-check's answers are this run's numbers
    found_q, gap_q = m["self_check"][0], m["self_check"][2]
    assert found_q["answer"] == ("all 40" if m["tasks"]["world-objects"]["found"] == 40
                                 else "half or more, but not all")
    gap = abs(m["tasks"]["world-objects"]["full"] - m["tasks"]["world-objects"]["dedup"])
    assert gap_q["answer"] == ("less than 1 point" if gap < 1 else
                               "1 to 3 points" if gap <= 3 else "more than 3 points")
    assert m["self_check"][1]["answer"] == "the cosine search's best threshold"
    # the worked solutions ran and printed what their prose reads
    printed = _printed(out)
    assert "closest to the threshold 0.95: " in printed
    assert re.search(r"10,000 upstream images, 40 planted: verified at 0\.95 precision "
                     r"(0\.9\d|1\.00)", printed)
    for name in params["tasks"]:  # exercise 3: accuracy on the flagged images vs the rest
        assert f"{name}: {m['tasks'][name]['dups']} flagged, accuracy " in printed


def _printed(out_dir):
    """Everything the executed lesson (and its appended solutions) printed."""
    (executed,) = out_dir.glob("*.ipynb")
    return "".join(o.get("text", "") for c in nbformat.read(str(executed), as_version=4).cells
                   if c.cell_type == "code" for o in c.outputs)


# Lesson 08's test pre-trains its own three small models (about 10 s each: 250 steps at batch
# 64 on 8,000 / 2,000 / 500 distinct upstream images), not the lesson's shared ones.
SMALL_08 = dict(upstream_models=[["R14x0.25", 8000], ["R14x0.25", 2000], ["R14x0.25", 500]],
                upstream_steps=250, upstream_batch=64, upstream_lr=0.1, n_objects=100,
                iid_size=500)


@pytest.mark.slow
def test_08_out_of_context(shared_cache, tmp_path):
    """Three upstream models that differ in their data, IID vs OOC, with the worked solutions;
    every figure checked against the numbers the lesson computed.

    Measured with these parameters over seeds 0, 1, 2 (the upstream models' and the OOC
    build's seed), 2 Dec 2026, IID / OOC top-1 (%) for 8,000 / 2,000 / 500 images:
    seed 0: 3.6 / 1.25, 3.8 / 0.88, 3.2 / 0.88; seed 1: 3.4 / 1.0, 2.4 / 0.62, 2.4 / 1.38;
    seed 2: 2.8 / 0.75, 4.2 / 0.5, 3.2 / 1.75. The smallest IID - OOC gap is 1.02 points, the
    lowest IID 2.4% (chance 0.14%). Exercise 3 (backgrounds alone called a class of that
    habitat): 61-85% (chance 12.5%). Margins: OOC < IID - 0.5 for every model (0.52 below the
    smallest gap), IID > 5 x chance, background shortcut > 40%. These tiny models are too
    close to each other for the test to assert an order between them; the lesson's defaults
    (1,000 / 5,000 / 50,000 images, 600 steps, shared) are recorded over seeds in
    bench/README.md, and tests/test_lesson_tools.py checks that they are the shared ones."""
    m = run("08_out_of_context", tmp_path, solutions=True, **SMALL_08)
    names = [f"R14x0.25, {size:,} images" for _, size in SMALL_08["upstream_models"]]
    assert m["objects"] == 100 and m["backgrounds"] == 8 and m["images"] == 100 * 8
    assert list(m["models"]) == names
    for name, point in m["models"].items():
        assert point["iid_examples"] == 500 and point["ooc_examples"] == m["images"]
        assert point["iid_top1"] > 5 * m["chance_top1"], name  # the model learnt its classes
        assert point["ooc_top1"] < point["iid_top1"] - 0.5, name  # supplementary F
        assert point["own habitat images"] == 100 and point["other images"] == 100 * 7
    assert m["ooc_below_iid_for_every_model"] is True
    out = tmp_path / "08_out_of_context"

    # the scatter: one point per model at exactly its IID and OOC top-1, beside the diagonal
    (scatter,) = figures(out, "Out-of-context vs IID top-1 of the upstream models")
    diagonal, *points = scatter["data"]
    assert diagonal["name"] == "OOC = IID" and values(diagonal["x"]) == values(diagonal["y"])
    assert [p["name"] for p in points] == names
    for p in points:
        assert values(p["x"]) == pytest.approx([m["models"][p["name"]]["iid_top1"]], abs=1e-4)
        assert values(p["y"]) == pytest.approx([m["models"][p["name"]]["ooc_top1"]], abs=1e-4)
        assert p["text"] == [p["name"]]  # each point labelled with its own model
    top = max(values(diagonal["x"]))
    assert scatter["layout"]["xaxis"]["range"] == [0, top]  # every point inside the axes
    assert all(v < top for q in m["models"].values() for v in (q["iid_top1"], q["ooc_top1"]))

    # per background: every model, every one of the 8 backgrounds, the lesson's accuracies
    (per_bg,) = figures(out, "OOC top-1 per background")
    assert [tr["name"] for tr in per_bg["data"]] == names
    for tr in per_bg["data"]:
        by_bg = m["models"][tr["name"]]["by_background"]
        assert values(tr["x"]) == list(by_bg) and len(by_bg) == 8
        assert values(tr["y"]) == pytest.approx(list(by_bg.values()), abs=1e-4)
    # own habitat vs elsewhere: the split the lesson printed
    (habitat,) = figures(out, "OOC top-1 with the object on its own habitat")
    assert [tr["name"] for tr in habitat["data"]] == ["own habitat", "other backgrounds"]
    for tr in habitat["data"]:
        assert values(tr["x"]) == names
        assert values(tr["y"]) == pytest.approx([m["models"][n][tr["name"]] for n in names],
                                                abs=1e-4)

    # the builder panel's static view is in the executed copy
    printed, executed = _printed(out), (out / "08_out_of_context.ipynb").read_text()
    assert "Out-of-context builder (static copy)" in executed
    assert f"built: {m['images']} images" in executed
    # the self-check's answers are this run's numbers
    below, best, why, rule = m["self_check"]
    assert below["answer"] == "yes"
    assert best["answer"] == max(m["models"], key=lambda n: m["models"][n]["ooc_top1"])
    assert why["answer"].startswith("upstream, each class sits on its habitat")
    assert rule["answer"].startswith("the object's longest side: 80%")
    # the worked solutions ran at the lesson's size and printed what their prose reads
    for p_, b_ in (("center", "none"), ("center", "gaussian"), ("random", "none"),
                   ("random", "gaussian")):
        assert f"placement {p_:>6}, blend {b_:>8}: {names[0]} " in printed
    centre = re.search(rf"placement center, blend     none: {re.escape(names[0])} ([\d.]+)%",
                       printed)
    # the default build rebuilt by the solution: the lesson's own number (printed to 0.1)
    assert float(centre[1]) == pytest.approx(m["models"][names[0]]["ooc_top1"], abs=0.051)
    assert all(f"{n}: OOC top-1 " in printed and "% at 40%" in printed for n in names)
    shortcut = re.findall(r"called a class of that habitat (\d+)% of the time \(chance: 12\.5%\)",
                          printed)
    assert len(shortcut) == 3 and all(int(v) > 40 for v in shortcut)  # chance: 12.5%



# Lesson 09 reads released files. The test writes stand-ins in the released .npz layout from
# small bitkit models (seconds, instead of two 100 MB downloads): a short upstream pre-training
# for BiT-M-R50x1.npz, and a 1,000-class "fine-tuned" file whose head sends each photo to a
# chosen ImageNet class, so the lesson's top-5 table can only come from the file.
TINY_UPSTREAM = dict(upstream_size=2048, upstream_steps=60, upstream_batch=32)
PHOTO_CLASSES = {"astronaut": "space shuttle", "camera": "reflex camera", "chelsea": "tabby",
                 "china": "palace", "coffee": "espresso", "rocket": "missile"}
SMALL_09 = dict(task="digits", train_size=300, test_size=200, steps=40, batch_size=32)


def _released_stand_ins(folder):
    import torch

    from bitkit import data, experiments, hyperrule, lesson, models, weights
    from bitkit.data import bundled

    upstream = experiments.pretrain("R14x0.25", "world-upstream", size=TINY_UPSTREAM[
        "upstream_size"], steps=TINY_UPSTREAM["upstream_steps"],
        batch_size=TINY_UPSTREAM["upstream_batch"], progress=False)
    upstream_file = weights.save_npz(upstream, folder / "BiT-M-R14x0.25.npz")
    classifier = models.create("R14x0.25", num_classes=1000)
    body = {k: v for k, v in upstream.state_dict().items() if not k.startswith("head.")}
    classifier.load_state_dict(body, strict=False)
    photos = bundled.photos()
    size = hyperrule.hyperrule(data.get_card("ilsvrc2012")).crop  # the lesson's test resolution
    with torch.no_grad():
        f = classifier.eval().features(data.BiTTransform(size, size, train=False)(
            [p.image for p in photos]))
        # class c(i) scores (f - mean) . u_i with u_i the unit vector of photo i's centred
        # features: photo i's largest score is its own (Cauchy-Schwarz), every other class is 0
        u = torch.nn.functional.normalize(f - f.mean(0), dim=1)
        names = lesson.imagenet_class_names()
        for p, ui in zip(photos, u, strict=True):
            c = names.index(PHOTO_CLASSES[p.name])
            classifier.head.weight[c, :, 0, 0] = 50 * ui
            classifier.head.bias[c] = -50 * (f.mean(0) @ ui)
    finetuned_file = weights.save_npz(classifier, folder / "BiT-M-R14x0.25-ILSVRC2012.npz")
    return upstream_file, finetuned_file


def _check_09_figures(out, m):
    """Every figure of lesson 09 against the numbers it computed (issue 16)."""
    (grid,) = figures(out, "The 6 photographs of the photos card")
    shown = [tr for tr in grid["data"] if tr["type"] == "image"]
    assert len(shown) == len(m["photos"]) == 6
    captions = grid["layout"]["annotations"]
    assert [a["text"] for a in captions] == m["photos"]
    for tr, caption in zip(shown, captions, strict=True):  # each caption sits over its image
        axis = grid["layout"]["xaxis" + tr.get("xaxis", "x")[1:]]
        lo, hi = axis["domain"]
        assert lo <= caption["x"] <= hi
        assert tr["source"].startswith("data:image/jpeg;base64,")  # JPEG, not pixels as JSON

    (top5,) = figures(out, "Top-5 of ")
    bars = [tr for tr in top5["data"] if tr["type"] == "bar"]
    images = [tr for tr in top5["data"] if tr["type"] == "image"]
    assert [tr["name"] for tr in bars] == m["photos"] and len(images) == len(bars)
    titles = {a["text"]: a for a in top5["layout"]["annotations"]}
    for image, bar in zip(images, bars, strict=True):
        name = bar["name"]
        assert values(bar["y"]) == m["top5"][name]  # bars = the run's top-5 and probabilities
        assert values(bar["x"]) == pytest.approx([100 * p for p in m["top5_prob"][name]],
                                                  abs=1e-4)
        bar_y = top5["layout"]["yaxis" + bar["yaxis"][1:]]["domain"]
        image_y = top5["layout"]["yaxis" + image["yaxis"][1:]]["domain"]
        assert bar_y == image_y  # the photo and its bars share a row ...
        for title, tr in ((name, image), (f"{name}: top-5", bar)):  # ... titled by its name
            x_domain = top5["layout"]["xaxis" + tr["xaxis"][1:]]["domain"]
            assert x_domain[0] <= titles[title]["x"] <= x_domain[1]
            assert titles[title]["y"] == pytest.approx(bar_y[1], abs=0.01)
    assert top5["layout"]["height"] >= 150 * len(bars)

    (loss,) = figures(out, f"Fine-tuning loss on {m['task']}")
    assert values(loss["data"][0]["x"]) == m["loss_curve"]["step"]
    assert values(loss["data"][0]["y"]) == pytest.approx(m["loss_curve"]["loss"], abs=1e-5)
    assert m["loss_curve"]["step"][-1] == m["steps"]

    (acc,) = figures(out, f"Test top-1 on {m['task']}")
    assert values(acc["data"][0]["x"]) == ["chance", "linear probe", "fine-tuned"]
    assert values(acc["data"][0]["y"]) == pytest.approx(
        [m["chance_top1"], m["probe_top1"], m["finetune_top1"]], abs=1e-4)

    # the self-check's answers are this run's numbers
    winner, p50, head = m["self_check"]
    assert winner["answer"] == ("the frozen linear probe" if m["probe_top1"] >= m["finetune_top1"]
                                else f"the {m['steps']}-step fine-tune")
    best = max(p[0] for p in m["top5_prob"].values())
    assert p50["answer"] == ("yes" if best > 0.5 else "no")
    assert head["answer"].startswith("to keep its trained 1,000-class head")


def _check_09_solutions(out, m, sizes):
    """The worked solutions ran at the lesson's parameters and printed what their prose reads."""
    printed = _printed(out)
    for s in sizes:  # exercise 1: every resolution
        assert re.search(rf"^ *{s}px: astronaut ", printed, re.MULTILINE), s
    assert "top-1 changes with the resolution for: " in printed
    n = m["num_classes_predicted"]  # exercise 2: a zero head gives every class 1/n
    assert f"{n:,} classes: every probability in [{1 / n:.6f}, {1 / n:.6f}]" in printed
    # exercise 3: the grid of probe and fine-tune, the lesson's own run in its first row
    rows = re.findall(r"^ +([\d,]+) +(\d+) +([\d.]+)% +([\d.]+)%$", printed, re.MULTILINE)
    assert [(int(a.replace(",", "")), int(b)) for a, b, _, _ in rows] == [
        (m["train_size"], m["steps"]), (m["train_size"], 5 * m["steps"]), (50, m["steps"]),
        (50, 5 * m["steps"])]
    assert float(rows[0][2]) == pytest.approx(m["probe_top1"], abs=0.051)
    assert float(rows[0][3]) == pytest.approx(m["finetune_top1"], abs=0.051)
    assert float(rows[0][2]) > float(rows[2][2])  # the probe needs its images


@pytest.mark.slow
def test_09_released_bit(shared_cache, tmp_path):
    """With (stand-in) released files, solutions appended; every figure checked.

    Measured with these parameters over seeds 0, 1, 2 (the training subset's shuffle and the
    fine-tune's seed; the stand-in files are fixed), 2 Dec 2026: linear probe 86.0 / 80.5 /
    83.5%, 40-step fine-tune 28.0 / 39.5 / 42.5% (chance 10%). Margins: probe > chance + 60
    (10.5 below the lowest), fine-tune > chance + 12 (6 below), probe > fine-tune + 20 (the
    lesson's short-fine-tune point; 21 below the smallest gap, 41)."""
    from bitkit import lesson

    upstream_file, finetuned_file = _released_stand_ins(tmp_path)
    m = run("09_released_bit", tmp_path, solutions=True, finetuned_weights=str(finetuned_file),
            weights=str(upstream_file), model="R14x0.25", **SMALL_09)
    names = set(lesson.imagenet_class_names())
    assert not m["fallback"] and m["label_space"] == "ilsvrc2012"
    assert m["num_classes_predicted"] == 1000 and m["prediction_resolution"] == 480
    assert m["top1"] == PHOTO_CLASSES  # the table is computed from the file's head
    assert all(len(t) == 5 and set(t) <= names for t in m["top5"].values())
    assert all(1 >= p[0] > 0.5 and p == sorted(p, reverse=True) for p in m["top5_prob"].values())
    assert m["download"]["missing"] == [] and m["download"]["fetch_error"] is None
    assert m["train_size"] == 300 and m["test_size"] == 200 and m["steps"] == 40
    assert m["chance_top1"] == 10.0 and m["paper"]["bit_l"] is None  # digits: no paper number
    assert m["probe_top1"] > m["chance_top1"] + 60  # the upstream features carry the digits
    assert m["finetune_top1"] > m["chance_top1"] + 12
    assert m["probe_top1"] > m["finetune_top1"] + 20  # 40 steps: too few to catch the probe
    out = tmp_path / "09_released_bit"
    _check_09_figures(out, m)
    _check_09_solutions(out, m, (128, 224, 480))


@pytest.mark.slow
def test_09_without_files_or_network(shared_cache, tmp_path, monkeypatch):
    """No network (the Hub offline, a proxy nobody answers for the bucket; the kernel inherits
    both) and empty caches: download=True tries bitkit.weights.fetch, shows why it failed and
    falls back to the embedded model; solutions appended, every figure checked.

    Measured with these parameters over seeds 0, 1, 2 (here also the tiny upstream model's
    seed), 2 Dec 2026: linear probe 86.0 / 81.0 / 77.5%, 40-step fine-tune 28.0 / 28.0 / 34.0%,
    the best top-1 probability of a photo 0.19-0.20% (728 classes). Margins: probe > chance +
    60 (7.5 below the lowest), fine-tune > chance + 12 (6 below), probe > fine-tune + 20 (23.5
    below the smallest gap, 43.5)."""
    monkeypatch.setenv("BITKIT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    m = run("09_released_bit", tmp_path, solutions=True, download=True, **TINY_UPSTREAM,
            **SMALL_09)
    url = "https://storage.googleapis.com/bit_models/BiT-M-R50x1-ILSVRC2012.npz"
    assert m["fallback"] and m["finetuned_weights"] is None
    assert m["label_space"] == "world-upstream" and m["num_classes_predicted"] == 728
    assert m["download"]["urls"]["BiT-M-R50x1-ILSVRC2012"] == url
    assert url in m["download"]["fetch_error"]  # fetch's message: what to download by hand
    assert m["download"]["missing"] == ["BiT-M-R50x1-ILSVRC2012", "BiT-M-R50x1"]
    (executed,) = (tmp_path / "09_released_bit").glob("*.ipynb")
    printed = "".join(o.get("text", "") for c in nbformat.read(str(executed), as_version=4).cells
                      if c.cell_type == "code" for o in c.outputs)
    assert f" {url}" in printed and "curl -L -o " in printed  # weights.manual_download's lines
    assert "bitkit weights fetch BiT-M-R50x1-ILSVRC2012" in printed
    assert "bitkit.weights.fetch('BiT-M-R50x1-ILSVRC2012') failed" in printed
    assert m["probe_top1"] > m["chance_top1"] + 60 and m["finetune_top1"] > m["chance_top1"] + 12
    assert m["probe_top1"] > m["finetune_top1"] + 20
    assert max(p[0] for p in m["top5_prob"].values()) < 0.05  # no confident guess in 728 world classes
    out = tmp_path / "09_released_bit"
    _check_09_figures(out, m)
    _check_09_solutions(out, m, (16, 32, 64))  # the embedded model's half, own, double size
