"""``bitkit run`` / ``bitkit sweep`` on a tiny notebook: outputs, parameters, failures, sweeps."""

import json

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bitkit import cli, runs

KERNELSPEC = {"name": "bitkit", "display_name": "bitkit (.venv)", "language": "python"}


def _notebook(path, body):
    nb = new_notebook(metadata={"kernelspec": KERNELSPEC})
    params = new_code_cell("x = 2\nname = 'a'\nfail = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell("# tiny"), params, new_code_cell(body)]
    nbformat.write(nb, str(path))
    return path


BODY = """
from bitkit import lesson
import plotly.express as px
lesson.setup()
if fail:
    raise ValueError(f"bad x={x}")
px.bar(x=["a", "b"], y=[x, x * x], title="squares of x").show()
lesson.save_metrics({"x": x, "square": x * x, "name": name})
"""


@pytest.fixture()
def tiny(tmp_path):
    return _notebook(tmp_path / "tiny.ipynb", BODY)


def test_run_writes_notebook_html_metrics_and_parameters(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text("x: 5\nname: from-file\n")
    out = tmp_path / "out"
    code = cli.main(["run", str(tiny), "-f", "p.yaml", "-p", "x", "3", "--out", str(out),
                     "--quiet"])
    assert code == 0
    assert json.loads((out / "metrics.json").read_text()) == {"x": 3, "square": 9,
                                                              "name": "from-file"}
    params = yaml.safe_load((out / "parameters.yaml").read_text())
    assert params == {"x": 3, "name": "from-file", "fail": False}
    executed = nbformat.read(str(out / "tiny.ipynb"), as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)
    html = (out / "tiny.html").read_text()
    assert "squares of x" in html and "Plotly.newPlot" in html
    # plotly.js once, in the page (offline), and never in the saved notebook
    assert html.count("* plotly.js v") == 1 and html.index("* plotly.js v") < html.index("<body")
    assert "* plotly.js v" not in (out / "tiny.ipynb").read_text()
    assert (out / "tiny.ipynb").stat().st_size < 100_000
    assert "ran tiny.ipynb" in capsys.readouterr().out


def test_a_failing_cell_exits_non_zero_and_shows_the_cell(tiny, tmp_path, capsys):
    out = tmp_path / "failed"
    code = cli.main(["run", str(tiny), "-p", "fail", "true", "-p", "x", "7", "--out", str(out),
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "raise ValueError" in err and "ValueError: bad x=7" in err and "cell" in err
    assert (out / "tiny.ipynb").exists() and (out / "tiny.html").exists()
    assert not (out / "metrics.json").exists()


def test_unknown_parameter_and_missing_notebook_fail_before_a_kernel_starts(tiny, capsys):
    assert cli.main(["run", str(tiny), "-p", "y", "1"]) == 2
    assert "has no parameter 'y'; its parameters are: x, name, fail" in capsys.readouterr().err
    assert cli.main(["run", "nope.ipynb"]) == 2
    assert "nope.ipynb does not exist" in capsys.readouterr().err


def test_parameter_values_are_read_as_yaml():
    assert runs.parse_value("3") == 3 and runs.parse_value("0.5") == 0.5
    assert runs.parse_value("[1, 5]") == [1, 5] and runs.parse_value("null") is None
    assert runs.parse_value("world-objects") == "world-objects"
    assert runs.parse_value("true") is True


def test_sweep_over_a_grid_prints_a_summary_table(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = cli.main(["sweep", str(tiny), "-g", "x", "1,4", "-p", "name", "g", "--out", str(out),
                     "--quiet"])
    text = capsys.readouterr().out
    assert code == 0
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["x"], r["square"], r["status"]) for r in rows] == [(1, 1, "ok"), (4, 16, "ok")]
    header, first, second = text.splitlines()[:3]
    assert header.split()[:4] == ["run", "x", "status", "seconds"] and "square" in header
    assert first.split()[0] == "run-0" and second.split()[0] == "run-1"
    assert (out / "run-1" / "tiny.html").exists()


def test_grid_and_search_trials():
    assert runs.grid({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    trials = runs.search_trials(40, seed=0)
    assert len(trials) == 40 and [t["trial"] for t in trials] == list(range(40))
    assert all(1e-4 <= t["lr"] <= 1e-1 and 0 <= t["dropout"] <= 0.7 for t in trials)
    assert {t["steps"] for t in trials} <= {500, 1000, 2000, 4000, 8000, 16000}
    assert {t["resolution"] for t in trials} <= {64, 128, 192, 256, 320, 384}
    assert len({t["lr"] for t in trials}) == 40  # really random, and seeded:
    assert runs.search_trials(3, seed=0) == trials[:3] != runs.search_trials(3, seed=1)
    short = runs.search_trials(5, seed=0, steps_scale=0.01)
    assert [s["steps"] for s in short] == [max(5, round(t["steps"] * 0.01)) for t in trials[:5]]
    # the notebook gets the factor too, so it compresses BiT-HyperRule's 500 steps the same way
    assert {s["steps_scale"] for s in short} == {0.01} and trials[0]["steps_scale"] == 1.0


def test_sbatch_array_script_and_collect(tiny, tmp_path, capsys):
    out = tmp_path / "cluster"
    assert cli.main(["sweep", str(tiny), "-g", "x", "1,2,3", "--sbatch", "--out", str(out)]) == 0
    script = (out / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-2" in script and "--gpus-per-task=1" in script
    assert "-m bitkit run" in script and '-f "$RUN/params.yaml"' in script
    assert yaml.safe_load((out / "run-2" / "params.yaml").read_text()) == {"x": 3}
    (out / "run-0" / "metrics.json").write_text('{"square": 1}')  # as if task 0 finished
    capsys.readouterr()
    assert cli.main(["sweep", str(tiny), "--collect", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "ok" in lines[1] and "missing" in lines[2] and "square" in lines[0]
    # a typo fails before anything is written for the cluster
    assert cli.main(["sweep", str(tiny), "-g", "z", "1", "--sbatch", "--out",
                     str(tmp_path / "bad")]) == 2


def test_the_executed_copy_keeps_static_views_and_drops_dead_widget_models(tmp_path):
    view = "application/vnd.jupyter.widget-view+json"
    nb = new_notebook(metadata={"kernelspec": KERNELSPEC, "widgets": {
        "application/vnd.jupyter.widget-state+json": {"state": {"m1": {"_esm": "x" * 10_000}}}}})
    panel = nbformat.v4.new_output("display_data", data={
        view: {"model_id": "m1", "version_major": 2, "version_minor": 0},
        "text/html": "<b>static view of the panel</b>", "text/plain": "<Panel>"})
    bare = nbformat.v4.new_output("display_data", data={view: {"model_id": "m2"},
                                                        "text/plain": "IntSlider(value=3)"})
    cell = new_code_cell("panel")
    cell.outputs = [panel, bare]
    nb.cells = [cell]
    path = tmp_path / "done.ipynb"
    nbformat.write(nb, str(path))
    runs.keep_static_views(path)
    again = nbformat.read(str(path), as_version=4)
    assert "widgets" not in again.metadata
    first, second = again.cells[0].outputs
    assert set(first["data"]) == {"text/html", "text/plain"}  # the panel's static view stays
    assert set(second["data"]) == {"text/plain"}  # a bare widget: its text, not "model not found"
