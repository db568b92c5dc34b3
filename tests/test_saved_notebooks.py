"""A notebook saved from JupyterLab (or by ``bitkit run``) reopens tomorrow: every panel as its
static view, its figures as plotly outputs that draw without trust or kernel, no dead widget
state. ``bitkit.runs.pre_save_hook`` does it on save; ``keep_static_views`` after a run."""

import copy
import json

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

from bitkit import runs
from bitkit.lesson import Question
from widgets import HyperRulePanel, SelfCheck

VIEW = "application/vnd.jupyter.widget-view+json"


def _saved_by_lab(*panels):
    """The notebook JupyterLab sends to the server on save: live widget outputs and state."""
    nb = new_notebook(metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {
        "state": {"m": {"_esm": "x" * 50_000}}}}})
    cell = new_code_cell("panel")
    cell.outputs = [new_output("display_data", data=copy.deepcopy(p._repr_mimebundle_()))
                    for p in panels]
    progress = new_output("display_data", data={VIEW: {"model_id": "bar"},
                                                "text/plain": "100%|##########| 5/5"})
    cell.outputs.append(progress)
    nb.cells = [cell]
    return json.loads(nbformat.writes(nb))  # the JSON dict of a contents model


def test_save_hook_keeps_static_views_and_gives_figures_their_own_output():
    panel = HyperRulePanel(train_size=19_000, image_size=32)
    quiz = SelfCheck([Question("Steps for 19,000 images?", ["500", "10000"], "500")])
    model = {"type": "notebook", "format": "json", "content": _saved_by_lab(panel, quiz)}
    size_before = len(json.dumps(model["content"]))
    runs.pre_save_hook(model=model, path="lesson.ipynb", contents_manager=None)
    nb = nbformat.from_dict(model["content"])
    nbformat.validate(nb)
    assert "widgets" not in nb.metadata  # dead widget state: gone
    outputs = nb.cells[0].outputs
    assert all(VIEW not in o.get("data", {}) for o in outputs)
    # the panel's tables, then its figure as plotly JSON, then the quiz, then the progress text
    kinds = [sorted(o["data"]) for o in outputs]
    assert kinds == [["text/html", "text/plain"],
                     ["application/vnd.plotly.v1+json", "text/html", "text/plain"],
                     ["text/html", "text/plain"], ["text/plain"]]
    tables, figure, static_quiz, progress = outputs
    assert "small task: 500 steps" in tables["data"]["text/html"]
    assert runs.FIGURE_START not in tables["data"]["text/html"]  # the figure moved out
    spec = figure["data"]["application/vnd.plotly.v1+json"]
    assert spec["layout"]["title"]["text"].startswith("Learning rate: small task, 500 steps")
    assert spec["data"][0]["type"] == "scatter"  # the schedule's lr curve, not a picture of it
    assert "Plotly.newPlot" in figure["data"]["text/html"]  # what the HTML export draws
    assert "plotly.js v" not in json.dumps(model["content"])  # plotly.js itself is never saved
    assert "Steps for 19,000 images?" in "".join(static_quiz["data"]["text/html"])
    assert "".join(progress["data"]["text/plain"]) == "100%|##########| 5/5"
    assert len(json.dumps(model["content"])) < size_before - 40_000
    # saving twice changes nothing more; other files are not touched
    again = copy.deepcopy(model)
    runs.pre_save_hook(model=again, path="lesson.ipynb", contents_manager=None)
    assert again == model
    text = {"type": "file", "format": "text", "content": "x"}
    runs.pre_save_hook(model=text, path="notes.txt", contents_manager=None)
    assert text == {"type": "file", "format": "text", "content": "x"}


def test_a_figure_with_script_text_survives_the_round_trip():
    import plotly.graph_objects as go

    from widgets._common import figure_html

    fig = go.Figure(go.Bar(x=["</script><b>x</b>"], y=[1]), layout_title_text="tricky")
    html = figure_html(fig)
    assert html.count("</script>") == 2  # the JSON cannot end its script early
    (spec, fragment), = runs._FIGURE.findall(html)
    assert json.loads(spec)["data"][0]["x"] == ["</script><b>x</b>"]


def test_the_server_extension_registers_the_save_hook(tmp_path):
    from jupyter_server.serverapp import ServerApp

    app = ServerApp(root_dir=str(tmp_path), jpserver_extensions={"bitkit.jupyter_extension": True})
    app.initialize(argv=[], find_extensions=False, new_httpserver=False)
    assert runs.pre_save_hook in app.contents_manager._pre_save_hooks
    # a save through the server's contents manager writes the static view
    panel = HyperRulePanel()
    model = {"type": "notebook", "format": "json", "content": _saved_by_lab(panel)}
    import asyncio

    asyncio.run(app.contents_manager.save(model, "lesson.ipynb"))
    saved = nbformat.read(str(tmp_path / "lesson.ipynb"), as_version=4)
    assert "widgets" not in saved.metadata
    assert [sorted(o["data"]) for o in saved.cells[0].outputs][1] == [
        "application/vnd.plotly.v1+json", "text/html", "text/plain"]


def _enabled_server_extensions(config_dirs):
    from jupyter_server.extension.config import ExtensionConfigManager

    return ExtensionConfigManager(read_config_path=[str(d) for d in config_dirs]) \
        .get_jpserver_extensions()


def test_enable_writes_the_config_a_wheel_installs_where_jupyter_reads_it(tmp_path):
    from pathlib import Path

    import tomllib

    from bitkit import jupyter_extension

    written = jupyter_extension.enable(prefix=tmp_path)
    assert _enabled_server_extensions([tmp_path / "etc" / "jupyter"]) == {
        "bitkit.jupyter_extension": True}
    # the same file the wheel's data-files carry
    root = Path(__file__).resolve().parents[1]
    data_files = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "data-files"]
    (source,) = data_files[str(jupyter_extension.CONFIG_DIR)]
    assert (root / source).read_bytes() == written.read_bytes()
    jupyter_extension.enable(prefix=tmp_path)  # enabling twice is harmless
    assert [p.name for p in written.parent.iterdir()] == ["bitkit.json"]


def test_this_environment_saves_lessons_with_static_views():
    # What `make install` promises: the Jupyter server of the environment running the tests
    # loads the save hook (a CI run once found it silently missing after a fresh install).
    from jupyter_core.paths import jupyter_config_path

    enabled = _enabled_server_extensions(jupyter_config_path())
    assert enabled.get("bitkit.jupyter_extension") is True, (
        "bitkit's Jupyter server extension is not enabled in this environment, so lessons "
        "saved from JupyterLab keep dead widgets; run `python -m bitkit.jupyter_extension`")
