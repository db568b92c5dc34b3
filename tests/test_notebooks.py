"""The lesson notebooks: committed clean, parametrised, and run headless through ``bitkit run``.

Every lesson is executed with small parameters, and its ``metrics.json`` is checked: numbers in
sensible ranges and the comparisons the lesson claims. All lessons share one upstream model
(one ``BITKIT_CACHE`` for the session): the quickstart pre-trains it, the others reuse it.
"""

import os
import re
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from bitkit import runs

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["00_quickstart", "01_architecture", "02_pretraining", "03_transfer", "04_few_shot",
            "05_vtab", "06_error_browser", "07_duplicates", "08_out_of_context", "09_released_bit"]

# One upstream model for every lesson, the notebooks' own default (about 100 s on 2 cores): the
# smallest that makes transfer beat scratch by a clear margin.
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
def test_kernelspec_is_the_projects_and_papermill_finds_it(path):
    spec = nbformat.read(str(path), as_version=4).metadata.kernelspec
    assert spec.name == runs.KERNEL
    found = KernelSpecManager().get_kernel_spec(spec.name)  # make test installs it in .venv
    assert Path(found.argv[0]).exists() and found.language == "python"


# --------------------------------------------------------------------------------------------
# Executed headless
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("bitkit-cache")
    old = os.environ.get("BITKIT_CACHE")
    os.environ["BITKIT_CACHE"] = str(cache)  # the kernels inherit it
    yield cache
    if old is None:
        os.environ.pop("BITKIT_CACHE", None)
    else:
        os.environ["BITKIT_CACHE"] = old


def run(name, tmp_path, **params):
    result = runs.run_notebook(NOTEBOOKS / f"{name}.ipynb", params, tmp_path / name,
                               log_output=False, cell_timeout=600)
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


@pytest.mark.slow
def test_00_quickstart(shared_cache, tmp_path):
    m = run("00_quickstart", tmp_path, **UPSTREAM, train_size=500, steps=50, test_size=400)
    assert m["train_size"] == 500 and m["steps"] == 50 and m["test_size"] == 400
    assert m["chance_top1"] == 5.0
    assert 10 < m["scratch_top1"] < 90 and 10 < m["transfer_top1"] <= 100
    assert m["transfer_top1"] > m["scratch_top1"] + 5  # the lesson's claim, with a margin
    assert m["gain"] == pytest.approx(m["transfer_top1"] - m["scratch_top1"], abs=1e-3)
    assert m["mistakes"] == round(400 * (1 - m["transfer_top1"] / 100))
    # every caption of the mistakes grid sits over its own image (plotly orders facet titles
    # bottom row first): the annotation above trace i's subplot names mistake i
    (fig,) = figures(tmp_path / "00_quickstart", "The 16 most confident mistakes")
    layout, captions = fig["layout"], fig["layout"]["annotations"]
    assert len(captions) == len(fig["data"]) == len(m["confident_mistakes"]) == 16
    for trace, (true, predicted) in zip(fig["data"], m["confident_mistakes"], strict=True):
        xd = layout[trace["xaxis"].replace("x", "xaxis")]["domain"]
        yd = layout[trace["yaxis"].replace("y", "yaxis")]["domain"]
        (above,) = [a for a in captions if abs(a["x"] - (xd[0] + xd[1]) / 2) < 1e-6
                    and abs(a["y"] - yd[1]) < 1e-6]
        assert above["text"].startswith(f"{true}<br>→ {predicted} (")
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


@pytest.mark.slow
def test_01_architecture(shared_cache, tmp_path):
    m = run("01_architecture", tmp_path, train_size=300, test_size=300, steps=20, batch_size=16,
            micro_batch=4)
    err = m["split_error"]
    assert err["GN+WS"] < 1e-4 and err["GN"] < 1e-4  # exact: no batch statistics
    assert err["BN"] > 1e-2 and err["BN+WS"] > 1e-2  # BN's gradient depends on the split
    assert set(m["top1"]) == {f"{v}@{b}" for v in ("BN", "BN+WS", "GN", "GN+WS") for b in (16, 4)}
    assert all(0 <= t <= 100 for t in m["top1"].values())
    assert abs(m["gnws_split_drop"]) <= 5  # the same update either way, up to float noise
    assert m["chance_top1"] == 5.0
    # the bar chart shows what the lesson computed: one bar per run, side by side
    (fig,) = figures(tmp_path / "01_architecture", "From scratch on")
    assert fig["layout"]["barmode"] == "group"
    bars = {t["name"]: dict(zip(values(t["x"]), values(t["y"]), strict=True))
            for t in fig["data"] if t["type"] == "bar"}
    assert set(bars) == {"16 per device", "4 per device"}
    for batch in (16, 4):
        got = bars[f"{batch} per device"]
        assert list(got) == ["BN", "BN+WS", "GN", "GN+WS"]
        assert got == pytest.approx({v: m["top1"][f"{v}@{batch}"] for v in got}, abs=1e-4)


@pytest.mark.slow
def test_02_pretraining(shared_cache, tmp_path):
    # Its own tiny runs (one model x 2 upstream sizes, a longer run, a run without weight decay;
    # the model axis is the same loop), 5 steps each: the networks are nearly untrained, so the
    # test checks the bookkeeping and the claims that hold for any network, not the paper's trends.
    models, sizes = ["R14x0.25"], [256, 512]
    m = run("02_pretraining", tmp_path, models=models, upstream_sizes=sizes, upstream_steps=5,
            upstream_batch=16, longer=2, shots=[1, 5], seeds=[0, 1, 2], pool_size=300,
            test_size=100, val_size=100)
    assert m["models"] == models and m["upstream_sizes"] == sizes and m["upstream_steps"] == 5
    assert m["chance_top1"] == 5.0
    assert m["chance_upstream_top1"] == pytest.approx(100 / 728, abs=1e-5)  # 6 decimals kept
    points = [m["grid"][model][str(size)] for model in models for size in sizes]
    points += [m["schedule"]["2x"], *m["weight_decay"].values()]
    for p in points:
        assert 0 <= p["upstream_top1"] <= 100 and p["conv_weight_norm"] > 0
        assert set(p["linear"]) == {"1", "5"}
        assert all(m["chance_top1"] < v <= 100 for v in p["linear"].values())  # features carry signal
        assert p["linear"]["5"] > p["linear"]["1"]  # more shots help, for any feature extractor
    sched = m["schedule"]
    assert sched["model"] == models[0] and sched["upstream_size"] == max(sizes)
    assert sched["1x"]["steps"] == 5 and sched["2x"]["steps"] == 10
    assert sched["1x"]["upstream_top1"] == m["grid"][models[0]][str(max(sizes))]["upstream_top1"]
    wd = m["weight_decay"]
    assert set(wd) == {"0.0001", "0"}  # BiT's 1e-4 is the grid run itself, reused from the cache
    assert wd["0.0001"] == m["grid"][models[0]][str(max(sizes))]
    assert wd["0"]["conv_weight_norm"] >= wd["0.0001"]["conv_weight_norm"]  # no decay: weights grow


@pytest.mark.slow
def test_03_transfer(shared_cache, tmp_path):
    tasks = ["world-objects", "world-texture", "digits"]
    m = run("03_transfer", tmp_path, **UPSTREAM, tasks=tasks, train_size=300, steps=40,
            test_size=300)
    assert list(m["tasks"]) == tasks and m["processes"] == 1
    for name, t in m["tasks"].items():
        assert t["train_size"] == 300 and 0 <= t["scratch"] <= 100, name
        assert t["transfer"] > t["chance"], name  # transfer learns every task
        assert t["paper BiT-L"] is None  # embedded and sklearn tasks: no paper number
    objects = m["tasks"]["world-objects"]
    assert objects["transfer"] > objects["scratch"] + 5
    assert m["mean_transfer"] > m["mean_scratch"]
    # the chart's bars are the run's numbers, every task on its axis, side by side
    (fig,) = figures(tmp_path / "03_transfer", "BiT-HyperRule transfer vs from scratch")
    assert fig["layout"]["barmode"] == "group"
    series = {t["name"]: dict(zip(values(t["x"]), values(t["y"]), strict=True))
              for t in fig["data"]}
    for name, key in (("from scratch", "scratch"), ("BiT transfer", "transfer"),
                      ("chance", "chance")):
        assert list(series[name]) == tasks
        assert series[name] == pytest.approx({t: m["tasks"][t][key] for t in tasks}, abs=1e-4)


@pytest.mark.slow
def test_04_few_shot(shared_cache, tmp_path):
    m = run("04_few_shot", tmp_path, **UPSTREAM, shots=[1, 5], seeds=[0, 1, 2],
            finetune_shots=[1], finetune_seeds=[0], finetune_steps=20, test_size=400)
    up, rnd = m["linear_upstream"], m["linear_random"]
    assert set(up) == set(rnd) == {"1", "5"} and m["seeds"] == 3
    assert up["5"] > up["1"]  # more shots help
    assert up["5"] > rnd["5"] + 5  # pre-trained features beat random ones
    assert all(s >= 0 for s in m["linear_upstream_spread"].values())
    assert m["chance_top1"] < m["finetuned_upstream"]["1"] <= 100
    # the curves are the run's medians, with min-max bars that match its spread
    (fig,) = figures(tmp_path / "04_few_shot", "Few-shot top-1 on world-objects")
    curves = {t["name"]: t for t in fig["data"] if t.get("name")}
    for name, key in (("linear, BiT upstream (median)", "linear_upstream"),
                      ("linear, random init (median)", "linear_random")):
        assert values(curves[name]["x"]) == [1, 5]
        assert values(curves[name]["y"]) == pytest.approx([m[key]["1"], m[key]["5"]], abs=1e-4)
    bars = curves["linear, BiT upstream (median)"]["error_y"]
    spread = [a + b for a, b in zip(values(bars["array"]), values(bars["arrayminus"]),
                                    strict=True)]
    assert spread == pytest.approx([m["linear_upstream_spread"][k] for k in ("1", "5")], abs=1e-4)
    star = curves["fine-tuned, BiT upstream (median)"]
    assert values(star["y"]) == pytest.approx([m["finetuned_upstream"]["1"]], abs=1e-4)


def test_05_takes_the_random_search_trials_of_bitkit_sweep():
    # `bitkit sweep notebooks/05_vtab.ipynb --search N` passes each trial's numbers as parameters
    nb = NOTEBOOKS / "05_vtab.ipynb"
    for trial in runs.search_trials(6, steps_scale=0.01):
        assert runs.resolve_parameters(nb, trial) == trial


def test_05_vtab_split_is_official_or_random(tmp_path):
    with pytest.raises(runs.NotebookFailed) as e:  # checked before any data or model
        runs.run_notebook(NOTEBOOKS / "05_vtab.ipynb", {"vtab_split": "first"}, tmp_path / "bad",
                          log_output=False)
    assert e.value.cell is not None and e.value.cell <= 3
    assert ("parameter vtab_split = 'first': must be 'official' (VTAB-1k's own slices) or "
            "'random' (a seeded 800/200)") in e.value.error


@pytest.mark.slow
def test_05_vtab(shared_cache, tmp_path):
    tasks = ["world-objects", "world-count"]
    # 2 trials of 5 and 16 steps (steps_scale 0.001) per task, HyperRule shortened to 30 steps
    m = run("05_vtab", tmp_path, **UPSTREAM, tasks=tasks, trials=2, steps_scale=0.001,
            hyperrule_steps=30, batch_size=16, test_size=100)
    assert list(m["tasks"]) == tasks and m["trials"] == 2 and m["hyperrule_steps"] == 30
    # VTAB-1k's split by default, VTAB's most common rule on the stand-ins (the cards' vtab_splits)
    assert m["vtab_split"] == "official"
    for name, t in m["tasks"].items():
        assert t["split"] == {"train800": "train[:800]", "val200": "train[800:1000]",
                              "train800val200": "train[:800]+train[800:1000]", "test": "test"}
        assert t["positions"] == {"train800": [0, 799, 800], "val200": [800, 999, 200],
                                  "train1000": [0, 999, 1000]}, name  # (first, last, count)
    for name, t in m["tasks"].items():
        assert [r["trial"] for r in t["trials"]] == [0, 1], name  # SearchSpace trials 0 and 1
        assert all(0 <= r[k] <= 100 for r in t["trials"] for k in ("val", "test")), name
        best = max(t["trials"], key=lambda r: r["val"])  # selected on val200, never on test
        assert t["best_val"] == best["val"] and t["best_trial"] == best["trial"], name
        assert 0 <= t["search"] <= 100 and 0 <= t["hyperrule"] <= 100, name
        assert t["cost_vs_hyperrule"] > 0, name
    objects = m["tasks"]["world-objects"]
    assert objects["hyperrule"] > objects["chance"] + 10  # the rule transfers a natural task
    assert set(m["groups"]) == {"natural", "structured"}
    assert m["vtab_hyperrule"] == pytest.approx(
        sum(t["hyperrule"] for t in m["tasks"].values()) / 2, abs=1e-3)
    assert m["search_minus_hyperrule"] == pytest.approx(m["vtab_search"] - m["vtab_hyperrule"],
                                                        abs=1e-3)
    curve = m["curve"]
    assert curve["trials"] == [1, 2]
    assert curve["val"][1] >= curve["val"][0]  # best-so-far on val200 can only go up
    assert all(0 <= v <= 100 for v in curve["test"])


@pytest.mark.slow
def test_05_vtab_random_split_is_a_named_option(shared_cache, tmp_path):
    m = run("05_vtab", tmp_path, **UPSTREAM, tasks=["world-count"], trials=1, steps_scale=0.001,
            hyperrule_steps=10, batch_size=16, test_size=50, vtab_split="random")
    assert m["vtab_split"] == "random"
    t = m["tasks"]["world-count"]
    assert t["split"]["train800"] == "800 random of train (seed 0)"  # seed also seeds upstream
    first, last, n = t["positions"]["train800"]
    assert n == 800 and last - first + 1 > 800  # a random 800 of the 2000, not the first 800
    assert t["positions"]["val200"][2] == 200 and t["positions"]["train1000"][2] == 1000


@pytest.mark.slow
def test_06_error_browser(shared_cache, tmp_path):
    m = run("06_error_browser", tmp_path, **UPSTREAM, train_size=300, steps=40, test_size=300)
    assert m["test_size"] == 300 and m["steps"] == 40
    assert m["mistakes"] == round(300 * (1 - m["top1"] / 100))
    assert 15 < m["top1"] <= m["top5"] <= 100  # chance is 5%
    assert m["hardest_class_accuracy"] <= m["top1"] <= m["easiest_class_accuracy"]
    assert m["most_confused"]["count"] >= 1
    assert m["review"] == {"model right": 0, "label right": 0, "unsure": 0, "both wrong": 0}
    # the figures show every class, names in full, and the numbers the lesson computed
    from bitkit import data

    names = list(data.load("world-objects", "test").class_names)
    (bars,) = figures(tmp_path / "06_error_browser", "Per-class test accuracy")
    (trace,) = bars["data"]
    assert sorted(values(trace["y"])) == sorted(names) and trace["orientation"] == "h"
    acc = values(trace["x"])
    assert acc == sorted(acc) and acc[0] == pytest.approx(m["hardest_class_accuracy"] / 100)
    assert acc[-1] == pytest.approx(m["easiest_class_accuracy"] / 100)
    assert bars["layout"]["height"] >= 22 * len(names)  # a readable row per class
    executed = (tmp_path / "06_error_browser" / "06_error_browser.ipynb").read_text()
    assert "Mistakes (static copy of the error browser)" in executed  # the panel, reopened
    (cm,) = figures(tmp_path / "06_error_browser", "Confusion matrix")
    assert values(cm["data"][0]["x"]) == values(cm["data"][0]["y"]) == names
    assert cm["layout"]["xaxis"]["dtick"] == 1  # every label shown


@pytest.mark.slow
def test_07_duplicates(shared_cache, tmp_path):
    """The lesson's own model and search at the fixed threshold, on two host test sets.

    Measured with these parameters (world seed 0): world-objects recall 0.975, precision 1.0
    (one look-alike), world-count recall 0.925, precision 1.0; the cosine search at its best
    threshold (0.98, picked with the truth) precision 0.50, recall 0.10. Full and Dedup within
    0.4 points."""
    m = run("07_duplicates", tmp_path, **UPSTREAM, search_size=5000, train_size=300, steps=40,
            tasks=["world-objects", "world-count"])
    assert m["planted"] == 40 and m["threshold"] == 0.95  # fixed, not picked on the truth
    assert m["recall"] >= 0.95 and m["precision"] >= 0.9
    assert m["cosine_precision"] < 0.7 and m["cosine_recall"] < 0.7
    for name, t in m["tasks"].items():
        assert t["planted"] == 40 and t["test_size"] == 1000
        assert t["found"] / t["planted"] >= 0.9, (name, t)
        flagged = t["found"] + t["look_alikes"] + t["false_positives"]
        assert (t["found"] + t["look_alikes"]) / flagged >= 0.9, (name, t)
        assert 1 <= t["dups"] <= flagged  # Table 1's Dups: test images with a flagged pair
        assert abs(t["full"] - t["dedup"]) < 3  # supplementary B: duplicates barely move it


@pytest.mark.slow
def test_08_out_of_context(shared_cache, tmp_path):
    m = run("08_out_of_context", tmp_path, **{k: v for k, v in UPSTREAM.items()
                                              if k != "upstream_size"},
            upstream_sizes=[UPSTREAM["upstream_size"]], n_objects=24, iid_size=500)
    assert m["objects"] == 24 and m["images"] == 24 * m["backgrounds"]
    (point,) = m["models"].values()
    assert point["iid_top1"] > 5 * m["chance_top1"]  # the upstream model learnt its classes
    assert point["ooc_top1"] < point["iid_top1"]  # out of context is harder (supplementary F)


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


@pytest.mark.slow
def test_09_released_bit(shared_cache, tmp_path):
    from bitkit import lesson

    upstream_file, finetuned_file = _released_stand_ins(tmp_path)
    m = run("09_released_bit", tmp_path, finetuned_weights=str(finetuned_file),
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
    assert m["probe_top1"] > m["chance_top1"] + 30  # the upstream features carry the digits
    assert m["finetune_top1"] > m["chance_top1"] + 8


@pytest.mark.slow
def test_09_without_files_or_network(shared_cache, tmp_path, monkeypatch):
    # No network (the Hub offline, a proxy nobody answers for the bucket; the kernel inherits
    # both) and empty caches: download=True tries bitkit.weights.fetch, shows why it failed and
    # falls back to the embedded model.
    monkeypatch.setenv("BITKIT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    m = run("09_released_bit", tmp_path, download=True, **TINY_UPSTREAM, **SMALL_09)
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
    assert m["probe_top1"] > m["chance_top1"] + 30 and m["finetune_top1"] > m["chance_top1"]
