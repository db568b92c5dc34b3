"""The panels and the lessons in a real browser: JupyterLab on localhost, headless Chromium
through Playwright.

Python-level tests cannot see whether a panel renders in JupyterLab (plotly's FigureWidget
needs its anywidget front end; ipywidgets needs the lab manager), nor whether a saved lesson
comes back. One JupyterLab with a token serves the module:

- a notebook with the HyperRule panel and the error browser: run it, drag the dataset-size
  control across 20,000, pick a class filter, check what the page shows;
- lessons, with small parameters: run each as a student would (Run All), check that no cell
  failed and no widget is empty or broken, save it, reopen it with a fresh kernel (a new page
  load), and check that every figure draws and every panel shows its static view, without
  "Error displaying widget". Every lesson, at parameters that reach every cell (the
  ``BITKIT_BROWSER_LESSONS`` variable picks a subset while working on one). These tests run
  last (conftest), when the session's upstream models are built and cached.

Screenshots are test artefacts: in ``$BITKIT_TEST_ARTIFACTS/browser`` when that is set (CI sets
it), else in the test's ``tmp_path``.

Playwright drives Debian's ``chromium`` (its own browser download needs the network). Without
that binary the test skips locally; under CI (``CI`` set) it fails instead, since ``.ci/run``
installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KERNEL = "bitkit"

if CHROMIUM is None:
    if os.environ.get("CI"):
        pytest.fail("CI is set but no chromium binary is on PATH: .ci/run installs it with "
                    "apt-get install chromium; the browser test must run in CI", pytrace=False)
    pytest.skip("no chromium on PATH (apt-get install chromium); the browser test needs it",
                allow_module_level=True)

SETUP = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import numpy as np, torch
from bitkit.evaluate import report_from_logits
from widgets import ErrorBrowser, HyperRulePanel
"""

REPORT = """
g = np.random.default_rng(0)
y = np.arange(90) % 6
report = report_from_logits(g.normal(size=(90, 6)) + 1.5 * np.eye(6)[y], y,
                            class_names=[f"class{i}" for i in range(6)])
images = [(torch.full((3, 8, 8), 40 * t, dtype=torch.uint8), int(t)) for t in y]
ErrorBrowser(report, images, annotations=None, page_size=6)
"""


def expected_mistakes() -> tuple[int, int]:
    """(all mistakes, mistakes of class2) of the notebook's report, computed here."""
    from bitkit.evaluate import report_from_logits

    g = np.random.default_rng(0)
    y = np.arange(90) % 6
    report = report_from_logits(g.normal(size=(90, 6)) + 1.5 * np.eye(6)[y], y,
                                class_names=[f"class{i}" for i in range(6)])
    wrong = ~report.correct(1)
    return int(wrong.sum()), int((wrong & (report.label == 2)).sum())


def notebook(path: Path) -> None:
    def cell(src: str) -> dict:
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                "source": src.strip()}

    nb = {"cells": [cell(SETUP), cell("HyperRulePanel(train_size=19_000, image_size=32)"),
                    cell(REPORT)],
          "metadata": {"kernelspec": {"name": KERNEL, "display_name": "bitkit", "language":
                                      "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, shared_cache):
    """JupyterLab on 127.0.0.1:<free port> with a random token; every Jupyter dir in a temporary
    folder. Its kernels inherit the session's BITKIT_CACHE (the lessons' shared models)."""
    tmp_path = tmp_path_factory.mktemp("lab")
    root, jupyter = tmp_path / "root", tmp_path / "jupyter"
    root.mkdir()
    # Render every cell (no windowing), so the checks see each output in the page.
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    # The project's kernel: this interpreter, registered where only this server looks.
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(jupyter),
                    "--name", KERNEL, "--display-name", "bitkit"], check=True,
                   capture_output=True)
    env = {**os.environ, "JUPYTER_PATH": str(jupyter / "share" / "jupyter"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "TQDM_DISABLE": "1"}
    token, port = uuid.uuid4().hex, free_port()
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
         "--LabApp.news_url=None", "--ServerApp.allow_root=True",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text())
                time.sleep(0.3)
        yield url, token, root
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module (Debian's binary, no network)."""
    from playwright.sync_api import expect, sync_playwright

    # Widgets and figures render in the page after the kernel answers: on two busy cores that
    # can take longer than Playwright's 5 s default.
    expect.set_options(timeout=30_000)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
            viewport={"width": 1400, "height": 1000})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def artefacts(tmp_path):
    """Where screenshots go: $BITKIT_TEST_ARTIFACTS/browser (kept by CI), else tmp_path."""
    root = os.environ.get("BITKIT_TEST_ARTIFACTS")
    folder = Path(root) / "browser" if root else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


KERNEL_IDLE = ("() => { const w = window.jupyterapp.shell.currentWidget;"
               " return w && w.sessionContext && w.sessionContext.session"
               " && w.sessionContext.session.kernel"
               " && w.sessionContext.session.kernel.status === 'idle'; }")


def open_notebook(page, url, token, name):
    # A workspace of its own: JupyterLab would otherwise restore the tabs of the last page, and
    # the run-all command would go to whichever notebook it made current.
    page.goto(f"{url}/lab/workspaces/{uuid.uuid4().hex[:8]}/tree/{name}?token={token}&reset")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell"
                           " && document.querySelector('.jp-Notebook')")
    page.wait_for_function(KERNEL_IDLE)


def test_panels_in_jupyterlab(lab, browser, artefacts):
    from playwright.sync_api import expect

    url, token, root = lab
    notebook(root / "panels.ipynb")
    total, class2 = expected_mistakes()
    started = time.monotonic()
    page = browser.new_page()
    try:
        page.set_default_timeout(60_000)
        open_notebook(page, url, token, "panels.ipynb")
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        news = page.get_by_role("button", name="No", exact=True)  # the "Jupyter news?" toast

        # --- HyperRule: drag the dataset size across 20,000 --------------------------------
        schedule = page.locator(".bitkit-schedule").first
        expect(schedule).to_contain_text("small task: 500 steps")
        title = page.locator(".jp-OutputArea .js-plotly-plot .gtitle").first
        expect(title).to_contain_text("500 steps")  # the FigureWidget rendered
        handle = page.locator(".jp-OutputArea .widget-hslider .noUi-handle").first
        handle.focus()
        for _ in range(40):  # one key press = one step of the log slider (x 1.023)
            page.keyboard.press("ArrowRight")
            if "medium" in schedule.inner_text():
                break
        expect(schedule).to_contain_text("medium task: 10,000 steps")
        expect(title).to_contain_text("10,000 steps")
        size_box = page.locator(".jp-OutputArea .widget-inline-hbox input[type=number]").first
        assert int(size_box.input_value()) >= 20_000
        if news.count():
            news.first.click()
        page.screenshot(path=str(artefacts / "hyperrule.png"), full_page=False)

        # --- ErrorBrowser: filter by true class --------------------------------------------
        pages = page.get_by_text(re.compile(r"mistakes 1–\d+ of \d+"))
        expect(pages).to_contain_text(f"of {total} (page 1/")
        # No widget message was dropped (e.g. a NaN in a figure cannot be sent as JSON).
        outputs = page.locator(".jp-OutputArea-output")
        expect(outputs.filter(has_text="Message serialization failed")).to_have_count(0)
        true_select = page.locator(".jp-OutputArea .widget-dropdown select").filter(
            has=page.locator("option", has_text="class2")).first
        true_select.select_option(label="class2")
        expect(pages).to_contain_text(f"of {class2} (page 1/")
        heat = page.locator(".jp-OutputArea .js-plotly-plot .gtitle",
                            has_text="Confusion of mistakes")
        expect(heat).to_have_count(1)
        page.locator(".jp-OutputArea .js-plotly-plot").filter(
            has_text="Confusion of mistakes").screenshot(path=str(artefacts / "confusion.png"))
        pages.scroll_into_view_if_needed()
        page.screenshot(path=str(artefacts / "error_browser.png"), full_page=False)
    finally:
        page.close()
    elapsed = time.monotonic() - started
    assert (artefacts / "hyperrule.png").stat().st_size > 10_000
    assert elapsed < 180, f"the browser part took {elapsed:.0f} s"


# --------------------------------------------------------------------------------------------
# Every lesson: run, save, reopen with a fresh kernel
# --------------------------------------------------------------------------------------------

# Every lesson makes the round trip. The parameters only need to show every panel and figure
# kind (the lessons' claims are tested by tests/test_notebooks.py; 05's rule at its own schedule
# adds no kind, so it is off here): each lesson's upstream
# models are the ones its papermill test builds earlier in the session (the same settings, so
# cache hits), and everything after them is as small as the lesson allows.
# BITKIT_BROWSER_LESSONS (a comma-separated list of lesson names) runs a subset.
def _parameters() -> dict[str, dict]:
    import test_notebooks as t

    return {
        "00_quickstart": dict(**t.UPSTREAM, train_size=100, val_size=100, lrs=[0.1], steps=20,
                              test_size=200),
        "01_architecture": dict(train_size=64, val_size=32, test_size=64, steps=6, batch_size=16,
                                micro_batch=2, lrs=[0.1], seeds=[0, 1]),
        # lesson 02's test pre-trains in a cache of its own, so these runs train here: tiny
        "02_pretraining": {**t.TEST02, "upstream_sizes": [256, 512], "upstream_steps": 20,
                           "longer": 2, "shots": [1, 5], "seeds": [0, 1], "pool_size": 300,
                           "test_size": 100, "val_size": 100},
        "03_transfer": dict(**t.UPSTREAM, tasks=["world-objects", "digits"], train_size=100,
                            val_size=100, lrs=[0.1], steps=10, test_size=100),
        "04_few_shot": dict(**t.UPSTREAM, shots=[1, 5], seeds=[0, 1], finetune_shots=[1],
                            finetune_seeds=[0], finetune_steps=10, test_size=200),
        "05_vtab": dict(**t.UPSTREAM, tasks=["world-objects"], trials=2, steps_scale=0.01,
                        resolution_scale=0.0625, rule_own_schedule=False, batch_size=16,
                        test_size=100),
        "06_error_browser": dict(**t.UPSTREAM, train_size=200, steps=20, test_size=200),
        "07_duplicates": dict(**t.UPSTREAM, search_size=2000, train_size=200, steps=20,
                              tasks=["world-objects"]),
        "08_out_of_context": t.SMALL_08,
        "09_released_bit": {**t.TINY_UPSTREAM, **t.SMALL_09, "steps": 10},
    }


LESSON_PARAMETERS = _parameters()


def _selected() -> list[str]:
    chosen = os.environ.get("BITKIT_BROWSER_LESSONS", "")
    if not chosen:
        return sorted(LESSON_PARAMETERS)
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    unknown = sorted(set(names) - set(LESSON_PARAMETERS))
    if unknown:
        raise ValueError(f"BITKIT_BROWSER_LESSONS names unknown lessons {unknown}; known: "
                         f"{', '.join(sorted(LESSON_PARAMETERS))}")
    return names


# The notebook model in the page: each cell's execution count and any error output.
CELL_STATE = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const cells = w.content.model.cells, state = {pending: 0, errors: [], code: 0};
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    state.code += 1;
    if (c.executionCount === null) state.pending += 1;
    for (let j = 0; j < c.outputs.length; j++) {
      const o = c.outputs.get(j).toJSON();
      if (o.output_type === 'error') state.errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
    }
  }
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  state.idle = !!k && k.status === 'idle';
  state.dirty = w.context.model.dirty;
  return state;
}"""

# Widget outputs that rendered nothing, and plotly outputs without a drawn plot.
EMPTY_OUTPUTS = """() => {
  const outputs = [...document.querySelectorAll('.jp-OutputArea-output')];
  // ipywidgets renders a widget output as a Lumino panel (a finished, hidden tqdm bar too)
  const widgets = outputs.filter(e => e.classList.contains('lm-Panel')
    && !e.classList.contains('lm-mod-hidden'));
  const plots = outputs.filter(e => e.classList.contains('jp-RenderedPlotly'));
  return {widgets: widgets.length, plots: plots.length,
          emptyWidgets: widgets.filter(e => e.getBoundingClientRect().height < 4).length,
          // drawn by plotly.js, or as the PNG snapshot JupyterLab's plotly renderer saves
          undrawnPlots: plots.filter(e => !e.querySelector('.main-svg, img')).length};
}"""


def _lessons():
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_every_lesson_makes_the_round_trip_by_default(monkeypatch):
    monkeypatch.delenv("BITKIT_BROWSER_LESSONS", raising=False)
    import test_notebooks as t

    assert _selected() == sorted(LESSON_PARAMETERS) == _lessons() == t.EXPECTED


def _check_page(page, where, screenshot):
    from playwright.sync_api import expect

    broken = page.locator(".jp-OutputArea-output", has_text="Error displaying widget")
    expect(broken).to_have_count(0)
    page.wait_for_function(f"() => ({EMPTY_OUTPUTS})().undrawnPlots === 0", timeout=60_000)
    found = page.evaluate(EMPTY_OUTPUTS)
    assert found["emptyWidgets"] == 0, (where, found)
    # The notebook scrolls inside the page: a viewport as tall as the notebook shows it whole.
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll("
                           "'.jp-WindowedPanel-outer, .jp-Notebook')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": 1400, "height": min(height + 200, 15_000)})
    page.screenshot(path=str(screenshot))
    page.set_viewport_size({"width": 1400, "height": 1000})
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", _selected())
def test_lesson_runs_saves_and_reopens_in_jupyterlab(lab, browser, artefacts, name):
    import nbformat
    import papermill

    url, token, root = lab
    # The lesson with small parameters injected, as papermill would, but not executed: the
    # browser runs it.
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(root / f"{name}.ipynb"),
                               parameters=LESSON_PARAMETERS[name], prepare_only=True,
                               kernel_name=KERNEL, progress_bar=False)
    page = browser.new_page()
    page.set_default_timeout(60_000)
    try:
        open_notebook(page, url, token, f"{name}.ipynb")
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        deadline = time.monotonic() + 600
        while True:
            state = page.evaluate(CELL_STATE)
            assert not state["errors"], f"{name}: {state['errors']}"
            if state["pending"] == 0 and state["idle"]:
                break
            assert time.monotonic() < deadline, f"{name} did not finish: {state}"
            time.sleep(1)
        live = _check_page(page, f"{name} after running", artefacts / f"{name}-run.png")
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function(f"() => !({CELL_STATE})().dirty")
        page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    finally:
        page.close()

    # What the save wrote (bitkit.runs.pre_save_hook): static views, no dead widget state.
    saved = nbformat.read(str(root / f"{name}.ipynb"), as_version=4)
    outputs = [o for c in saved.cells if c.cell_type == "code" for o in c.outputs]
    assert "widgets" not in saved.metadata
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in
                o.get("data", {})]
    # under 1 MB (0.29-0.75 MB measured); 09 shows photographs, and JupyterLab's plotly renderer
    # saves a PNG snapshot of every figure (1.55 MB measured)
    limit = 2_000_000 if name == "09_released_bit" else 1_000_000
    assert (root / f"{name}.ipynb").stat().st_size < limit
    plots = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]

    # Reopened with a fresh kernel: every figure draws, every panel shows its static view.
    page = browser.new_page()
    page.set_default_timeout(60_000)
    try:
        open_notebook(page, url, token, f"{name}.ipynb")
        state = page.evaluate(CELL_STATE)
        assert state["pending"] == 0 and not state["errors"]  # the saved run, not a new one
        again = _check_page(page, f"{name} reopened", artefacts / f"{name}-reopened.png")
    finally:
        page.close()
    assert again["widgets"] == 0  # nothing is left that needs a kernel to draw
    assert again["plots"] == len(plots) >= live["plots"] >= 1
