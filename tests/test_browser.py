"""The panels in a real browser: JupyterLab on localhost, headless Chromium through Playwright.

Python-level tests cannot see whether a panel renders in JupyterLab (plotly's FigureWidget
needs its anywidget front end; ipywidgets needs the lab manager). This test starts JupyterLab
with a token, opens a notebook with the HyperRule panel and the error browser, runs it, drags
the dataset-size control across 20,000 and picks a class filter, and checks what the page
shows. Screenshots go to the test's ``tmp_path``.

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

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1:<free port> with a random token; every Jupyter dir in tmp_path."""
    root, jupyter = tmp_path / "root", tmp_path / "jupyter"
    root.mkdir()
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


def test_panels_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, token, root = lab
    notebook(root / "panels.ipynb")
    total, class2 = expected_mistakes()
    started = time.monotonic()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{url}/lab/tree/panels.ipynb?token={token}")
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell"
                                   " && document.querySelector('.jp-Notebook')")
            # Wait for the kernel, then run every cell.
            page.wait_for_function(
                "() => { const w = window.jupyterapp.shell.currentWidget;"
                " return w && w.sessionContext && w.sessionContext.session"
                " && w.sessionContext.session.kernel"
                " && w.sessionContext.session.kernel.status === 'idle'; }")
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
            page.screenshot(path=str(tmp_path / "hyperrule.png"), full_page=False)

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
                has_text="Confusion of mistakes").screenshot(path=str(tmp_path / "confusion.png"))
            pages.scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "error_browser.png"), full_page=False)
        finally:
            context.close()
    elapsed = time.monotonic() - started
    assert (tmp_path / "hyperrule.png").stat().st_size > 10_000
    assert elapsed < 180, f"the browser part took {elapsed:.0f} s"
