"""Batch runs of the lesson notebooks: ``bitkit run`` and ``bitkit sweep``.

``bitkit run NOTEBOOK -p name value ... [-f params.yaml] [--out DIR]`` executes one notebook
headless with papermill (the project's ``bitkit`` kernel, a per-cell timeout, cell output logged)
and leaves in ``DIR``:

- ``<notebook>.ipynb``: the executed copy, outputs included; panels as their static views
  (:func:`keep_static_views`), figures without plotly.js, so it reopens anywhere and stays small;
- ``<notebook>.html``: the same as a standalone HTML page (plotly.js embedded once, offline);
- ``metrics.json``: the headline numbers the notebook wrote (``bitkit.lesson.save_metrics``);
- ``parameters.yaml``: the parameters used (the notebook's defaults overridden by yours).

``.bitkit-written.json`` records those four; a rerun into ``DIR`` replaces them and leaves every
other file there alone, and it refuses to start when ``DIR`` already holds a file of one of those
names that no run wrote (e.g. ``--out`` naming the notebook's own folder).

A failing cell makes the command exit non-zero, printing the cell's source and its error; the
executed copy and HTML are still written, so the failure can be read in context.

``--solutions`` also runs the lesson's worked solutions (``solutions/<notebook>.md`` beside it):
every ```` ```python ```` block becomes a cell after the lesson's own, in the same kernel, so a
solution uses the names the lesson defined and runs at the lesson's parameters. The test suite
runs every lesson this way: a solution that no longer runs fails there.

``bitkit sweep NOTEBOOK`` fans one notebook out over a parameter grid (``-g name v1,v2,...``) or
over trials of the supplementary-A random search (``--search N``, each trial's numbers passed as
notebook parameters), runs them one after another and prints a table of every run's metrics.
``--sbatch`` writes a SLURM array script instead, one array task per run, for a cluster.

Notebooks and the library meet in two environment variables set for the kernel:
``BITKIT_RUN_DIR`` (where ``metrics.json`` goes) and ``BITKIT_RUN_QUIET`` (no progress bars).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitkit import inputs

KERNEL = "bitkit"
METRICS = "metrics.json"
PARAMETERS = "parameters.yaml"
SUMMARY, SBATCH, RUN_PARAMS = "summary.json", "sweep.sbatch", "params.yaml"  # a sweep's files
SWEEP_WRITER = "bitkit.runs.sweep"
#: How :func:`run_notebook` signs its outputs in ``.bitkit-written.json`` (bitkit.fileio).
RUN_WRITER = "bitkit.runs.run_notebook"
DEFAULT_CELL_TIMEOUT = 3600  # seconds: a single cell longer than an hour is a hung cell
RUN_DIR_ENV = "BITKIT_RUN_DIR"
QUIET_ENV = "BITKIT_RUN_QUIET"
TENSORBOARD_ENV = "BITKIT_TENSORBOARD"  # read by bitkit.train (which this module never imports)


class NotebookFailed(RuntimeError):
    """A cell raised: ``cell`` (0-based index), its ``source`` and the error text."""

    def __init__(self, notebook: Path, cell: int | None, source: str, error: str, out_dir: Path):
        self.notebook, self.cell, self.source, self.error, self.out_dir = (notebook, cell, source,
                                                                         error, out_dir)
        where = f"cell {cell}" if cell is not None else "a cell"
        super().__init__(f"{notebook.name}: {where} failed:\n{_indent(source)}\n{error}\n"
                         f"(executed copy: {out_dir / notebook.name})")


@dataclass
class RunResult:
    """One executed notebook: where its outputs are, its parameters and its metrics."""

    notebook: Path
    out_dir: Path
    parameters: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def executed(self) -> Path:
        return self.out_dir / self.notebook.name

    @property
    def html(self) -> Path:
        return self.out_dir / self.notebook.with_suffix(".html").name


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A command-line value as YAML: ``3`` -> 3, ``0.1`` and ``1e-4`` -> numbers, ``true``,
    ``[1, 2]``, ``null``; anything else stays a string (``world-objects``,
    ``BiT-M-R50x1.npz``)."""
    try:
        return inputs.load_yaml(text)
    except Exception:  # noqa: BLE001 - not YAML (e.g. "a: b: c"): the text itself
        return text


def parse_grid_values(name: str, text: str) -> list[Any]:
    """The values of one ``-g NAME V1,V2,...`` axis. Commas inside brackets or quotes belong
    to a value, so ``[world-objects, digits],[world-count]`` is two list values."""
    try:
        values = inputs.load_yaml(f"[{text}]")
    except Exception:  # noqa: BLE001 - any YAML error: say what to write instead
        raise inputs.InputError(
            f"-g {name} {text!r}: cannot read the values; separate values with commas and "
            "bracket list values, e.g. -g tasks '[world-objects, digits],[world-count]'") from None
    if not values:
        raise inputs.InputError(f"-g {name}: give at least one value")
    return values


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, Any]:
    """The names and default values of a notebook's ``parameters`` cell."""
    import papermill

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} does not exist")
    info = papermill.inspect_notebook(str(path))
    if not info:
        raise ValueError(f"{path} has no cell tagged 'parameters'; papermill cannot set its "
                         "parameters")
    return {name: _literal(p["default"]) for name, p in info.items()}


def _literal(source: str) -> Any:
    """A default as written in the parameters cell (``50_000``, ``None``, ``[1, 5]``) -> value;
    an expression that is not a literal stays its source text."""
    import ast

    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source


def _absolute_paths(params: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths that exist from where the command was typed, made absolute: the kernel
    runs in the output folder, where they would not resolve."""
    out = {}
    for k, v in params.items():
        if isinstance(v, str) and v and not os.path.isabs(v) and (base / v).exists():
            v = str((base / v).resolve())
        out[k] = v
    return out


def uses_lesson_checks(notebook: str | os.PathLike) -> bool:
    """True for notebooks that check their parameters with ``lesson.check_parameters`` (the
    lessons): their values are checked here too, by the same rules, before a kernel starts."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    return any("lesson.check_parameters(" in c.source for c in nb.cells if c.cell_type == "code")


def parameter_rule(name: str, default: Any, *, lesson_checks: bool = False,
                   hardware: bool = True) -> inputs.Rule:
    """How a value of parameter ``name`` is checked: the lessons' rule for that name
    (``bitkit.lesson.CHECKS``) in a lesson, else the type of the notebook's default (a number
    for a number, text for text, ...; None always passes, as a notebook's "not set")."""
    if lesson_checks:
        from bitkit import lesson

        rule = (None if hardware else lesson.HARDWARE_FREE.get(name)) or lesson.CHECKS.get(name)
        if rule is not None:
            return inputs.optional(rule) if default is None else rule
    for kind, rule in ((bool, inputs.boolean()), (int, inputs.integer()),
                       (float, inputs.number()), (str, inputs.text(empty=True)),
                       (list, inputs.list_of(inputs.anything, min_len=0))):
        if isinstance(default, kind):
            return inputs.optional(rule)
    return inputs.anything


def resolve_parameters(notebook: str | os.PathLike, given: Mapping[str, Any],
                       params_file: str | os.PathLike | None = None, *,
                       hardware: bool = True) -> dict[str, Any]:
    """Defaults of ``notebook`` < ``params_file`` (YAML mapping) < ``given``, checked before a
    kernel starts: unknown names (with the closest known one) and every value (see
    :func:`parameter_rule`; ``hardware=False`` skips checks that read this machine's GPUs,
    for jobs written to run elsewhere)."""
    from bitkit.lesson import parameter_error

    name = Path(notebook).name
    defaults = notebook_parameters(notebook)
    doc = read_parameters_file(params_file, known=defaults, notebook=name)
    for key in given:
        if key not in defaults:
            raise inputs.InputError(f"{name} has no parameter {key!r}"
                                    f"{inputs.did_you_mean(key, defaults)}; its parameters "
                                    f"are: {', '.join(defaults)}")
    merged = _absolute_paths({**(doc.data if doc else {}), **given}, Path.cwd())
    lesson_checks = uses_lesson_checks(notebook)
    for key, value in merged.items():
        rule = parameter_rule(key, defaults[key], lesson_checks=lesson_checks, hardware=hardware)
        try:
            # the checked value: a bare "world-texture" for a list parameter becomes a list of
            # one, which the lesson can iterate (the raw text would be walked letter by letter)
            merged[key] = rule(value)
        except inputs.Invalid as e:
            message = str(parameter_error(key, value, e)).replace("NOTEBOOK", name)
            line = doc.line((key,)) if doc and key not in given else None
            where = f"{doc.file}:{line}: " if line else ""
            raise inputs.InputError(f"{where}{name}: {message}") from None
    return merged


def read_parameters_file(path: str | os.PathLike | None, *, known: Mapping[str, Any] | None = None,
                         notebook: str = "the notebook") -> inputs.Document | None:
    """A ``-f params.yaml`` file: a YAML mapping of parameter: value (None for no file).
    With ``known``, a name that is not among them fails with the file, line and closest name."""
    if path is None:
        return None
    doc = inputs.read_yaml(path, "parameter file")
    rules = {k: inputs.anything for k in known} if known is not None else None
    if rules is None:
        inputs.check(doc, inputs.mapping_of(inputs.text(), inputs.anything,
                                            "a YAML mapping of parameter: value"))
    else:
        inputs.check(doc, inputs.fields(rules, what="a YAML mapping of parameter: value"),
                     label=f"parameter of {notebook}")
    doc.data = dict(doc.data or {})
    return doc


# --------------------------------------------------------------------------------------------
# Running one notebook
# --------------------------------------------------------------------------------------------


def check_kernel(kernel: str = KERNEL) -> None:
    """Fail with the fix when the kernel spec is not installed where Jupyter looks."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise ValueError(
            f"no Jupyter kernel named {kernel!r}. Install it into this environment with "
            f"`{sys.executable} -m ipykernel install --sys-prefix --name {kernel} "
            f"--display-name \"bitkit (.venv)\"` (make test does this)") from None


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
#: A panel's static view wraps each of its plotly figures in these markers, with the figure's
#: JSON in an inert ``<script type="application/vnd.plotly.v1+json">`` (``widgets._common``).
FIGURE_START, FIGURE_END = "<!-- bitkit-figure -->", "<!-- /bitkit-figure -->"
_FIGURE = re.compile(re.escape(FIGURE_START) + r'<script type="application/vnd\.plotly\.v1\+json">'
                     r"(.*?)</script>(.*?)" + re.escape(FIGURE_END), re.DOTALL)


def _figure_outputs(output: dict[str, Any]) -> list[dict[str, Any]]:
    """A static panel view as outputs that draw without trust or kernel: its HTML (tables,
    thumbnails) without the figures, then each figure as plotly's own output (the mimetype
    JupyterLab draws even in an untrusted notebook, plus the HTML fragment nbconvert exports)."""
    import nbformat

    html = output["data"]["text/html"]
    html = "".join(html) if isinstance(html, list) else html
    figures = _FIGURE.findall(html)
    if not figures:
        return [output]
    output["data"]["text/html"] = _FIGURE.sub("", html)
    return [output, *(nbformat.v4.new_output("display_data", data={
        PLOTLY_MIME: json.loads(spec), "text/html": fragment,  # JSON reads "<\\/" as "</"
        "text/plain": "<plotly figure of the panel>"}) for spec, fragment in figures)]


def static_views(nb: Any) -> Any:
    """A notebook (nbformat node) as it must reopen without a kernel, changed in place.

    Every widget output keeps only its static rendering (bitkit's panels put one, the panel's
    state at display time, in the same output: ``widgets._common.Panel``), a panel's figures
    become plotly outputs of their own (they draw in JupyterLab without JavaScript in the HTML,
    so also in an untrusted notebook), and the notebook's saved widget state goes (models no
    kernel will serve again; plotly's FigureWidget alone stores 5 MB of its own JavaScript
    there). A reopened notebook then shows every panel as tables, thumbnails and figures
    instead of "Error displaying widget: model not found", and stays small.
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data and len(data) > 1:
                del data[WIDGET_VIEW]  # text/html (a panel) or text/plain (any widget) remains
            outputs.extend(_figure_outputs(output) if "text/html" in data else [output])
        cell.outputs = outputs
    nb.metadata.pop("widgets", None)
    return nb


def keep_static_views(notebook: str | os.PathLike) -> Path:
    """The executed copy of a headless run as it must reopen: :func:`static_views`."""
    import nbformat

    path = Path(notebook)
    nbformat.write(static_views(nbformat.read(str(path), as_version=4)), str(path))
    return path


def pre_save_hook(model: dict[str, Any], **_: Any) -> None:
    """A Jupyter pre-save hook: a notebook saved from JupyterLab is written as
    :func:`static_views` makes it, so it reopens tomorrow with every panel's last state instead
    of "model not found", at the size of its static views. The live panels in the open browser
    tab are untouched; re-running a cell brings a panel back live. Installing bitkit registers
    it with the environment's Jupyter server (``bitkit.jupyter_extension``)."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    import nbformat

    model["content"] = static_views(nbformat.from_dict(model["content"]))


def export_html(notebook: str | os.PathLike, html: str | os.PathLike) -> Path:
    """The executed notebook as one HTML file that works offline: plotly.js is embedded once,
    in the page's head, and every figure's fragment (``lesson.PLOTLY_RENDERER``) draws with it."""
    import nbconvert
    import nbformat
    from plotly.offline import get_plotlyjs

    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    if "Plotly.newPlot" in body:
        head = f'<script type="text/javascript">{get_plotlyjs()}</script>'
        body = body.replace("</head>", head + "\n</head>", 1)
    html = Path(html)
    html.write_text(body, encoding="utf-8")
    return html


SOLUTIONS_DIR = "solutions"
SOLUTION_TAG = "solution"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def solutions_file(notebook: str | os.PathLike) -> Path:
    """Where a lesson's worked solutions live: ``solutions/<name>.md`` next to the notebook."""
    path = Path(notebook)
    return path.parent / SOLUTIONS_DIR / f"{path.stem}.md"


def solution_cells(notebook: str | os.PathLike) -> list[Any]:
    """A lesson's worked solutions as notebook cells, in the order of the file: its prose (and
    any non-Python block, e.g. a ``bitkit sweep`` line for a terminal) as markdown cells, every
    ```` ```python ```` block as a code cell tagged ``solution``."""
    from nbformat.v4 import new_code_cell, new_markdown_cell

    path = solutions_file(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"{Path(notebook).name} has no worked solutions to run: "
                                f"expected {path} (or run without --solutions)")
    text = path.read_text(encoding="utf-8")
    cells = [new_markdown_cell(f"---\n*Worked solutions, appended from `{SOLUTIONS_DIR}/"
                               f"{path.name}` by `bitkit run --solutions`.*")]
    at = 0
    for block in _FENCE.finditer(text):
        if text[at:block.start()].strip():
            cells.append(new_markdown_cell(text[at:block.start()].strip()))
        code = new_code_cell(block[1].rstrip())
        code.metadata["tags"] = [SOLUTION_TAG]
        cells.append(code)
        at = block.end()
    if text[at:].strip():
        cells.append(new_markdown_cell(text[at:].strip()))
    if not any(c.cell_type == "code" for c in cells):
        raise ValueError(f"{path} has no ```python block: nothing of it can run")
    return cells


def with_solutions(notebook: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """A copy of ``notebook`` in ``folder`` with its worked solutions appended (same name)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    nb.cells.extend(solution_cells(notebook))
    out = Path(folder) / Path(notebook).name
    nbformat.write(nb, str(out))
    return out


def _failure(nb_path: Path, out_dir: Path, exc: Exception) -> NotebookFailed:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        tb = "\n".join(exc.traceback[-6:]) if exc.traceback else ""
        tb = re.sub(r"\x1b\[[0-9;]*m", "", tb)  # ANSI colours of IPython tracebacks
        return NotebookFailed(nb_path, exc.cell_index, exc.source,
                              f"{exc.ename}: {exc.evalue}\n{tb}".rstrip(), out_dir)
    return NotebookFailed(nb_path, None, "", f"{type(exc).__name__}: {exc}", out_dir)


def run_notebook(
    notebook: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    params_file: str | os.PathLike | None = None,
    kernel: str = KERNEL,
    cell_timeout: int | None = DEFAULT_CELL_TIMEOUT,
    log_output: bool = True,
    progress: bool = False,
    html: bool = True,
    env: Mapping[str, str] | None = None,
    tensorboard: str | os.PathLike | None = None,
    solutions: bool = False,
) -> RunResult:
    """Execute ``notebook`` with ``parameters`` into ``out_dir`` (default ``runs/<name>``).

    The kernel runs with the output folder as its working directory, so whatever the notebook
    writes (``metrics.json``, checkpoints, built datasets) lands next to the executed copy.
    Raises :class:`NotebookFailed` when a cell fails (after writing the executed copy and HTML).
    ``tensorboard``: a folder where every training run of the notebook also writes TensorBoard
    event files (``bitkit.train.TENSORBOARD_ENV``). ``solutions``: run the lesson's worked
    solutions after its own cells (:func:`solution_cells`).
    """
    import tempfile

    import papermill

    from bitkit.fileio import clear_written, record_written

    nb_path = Path(notebook).resolve()
    params = resolve_parameters(nb_path, dict(parameters or {}), params_file)
    check_kernel(kernel)
    out = Path(out_dir if out_dir is not None else Path("runs") / nb_path.stem).resolve()
    executed = out / nb_path.name
    # --out may name a folder of the user's: an earlier run's files are removed (a stale
    # metrics.json must not pass for this run's numbers), nothing else; other files stay, as
    # the notebook's own outputs do (runs/<task>/...). A file of one of this run's names that no
    # run recorded writing (a metrics.json of the user's, the source notebook itself when --out
    # is its folder) is refused, never deleted or overwritten.
    outputs = [PARAMETERS, METRICS, executed.name, *([_html_name(nb_path)] if html else [])]
    clear_written(out, RUN_WRITER, what="a notebook run", outputs=outputs,
                  legacy=_run_before_records)
    record_written(out, RUN_WRITER, outputs)
    _write_parameters(out / PARAMETERS, nb_path, params)
    env = dict(env or {})
    if tensorboard is not None:
        env[TENSORBOARD_ENV] = str(Path(tensorboard).resolve())
    saved = {k: os.environ.get(k) for k in (RUN_DIR_ENV, QUIET_ENV, *env)}
    os.environ.update({RUN_DIR_ENV: str(out), QUIET_ENV: "0" if progress else "1", **env})
    started = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="bitkit-run-")
    source = with_solutions(nb_path, scratch.name) if solutions else nb_path
    try:
        papermill.execute_notebook(str(source), str(executed), parameters=params,
                                   kernel_name=kernel, cwd=str(out), log_output=log_output,
                                   progress_bar=progress, execution_timeout=cell_timeout)
    except Exception as e:  # noqa: BLE001 - any failure is reported with its cell
        failure = _failure(nb_path, out, e)
        if executed.exists():
            keep_static_views(executed)
            if html:
                export_html(executed, out / nb_path.with_suffix(".html").name)
        raise failure from e
    finally:
        scratch.cleanup()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    keep_static_views(executed)
    result = RunResult(nb_path, out, params, seconds=time.perf_counter() - started)
    if html:
        export_html(executed, result.html)
    if (out / METRICS).is_file():
        result.metrics = json.loads((out / METRICS).read_text())
    return result


def _html_name(notebook: Path) -> str:
    return notebook.with_suffix(".html").name


def _run_before_records(out: Path) -> list[str]:
    """The outputs of a run from before ``.bitkit-written.json``, known by the header
    :func:`_write_parameters` gives ``parameters.yaml`` (which also names the notebook)."""
    try:
        with open(out / PARAMETERS, encoding="utf-8") as f:
            first = f.readline().rstrip("\n")
    except (OSError, ValueError):
        return []
    m = re.fullmatch(r"# parameters of ([^/\\]+\.ipynb) for this run \(defaults \+ overrides\)",
                     first)
    return [PARAMETERS, METRICS, m[1], _html_name(Path(m[1]))] if m else []


def _write_parameters(path: Path, notebook: Path, params: Mapping[str, Any]) -> None:
    import yaml

    full = {**notebook_parameters(notebook), **params}
    header = (f"# parameters of {notebook.name} for this run (defaults + overrides)\n"
              f"# overridden: {', '.join(params) or 'none'}\n")
    path.write_text(header + yaml.safe_dump(full, sort_keys=False))


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------


def grid(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values of ``axes`` (the last axis varies fastest)."""
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def search_trials(n: int, seed: int = 0, *, steps_scale: float = 1.0) -> list[dict[str, Any]]:
    """Parameters of the first ``n`` supplementary-A random-search trials (bitkit.hyperrule).

    Each trial gives ``lr``, ``steps`` (times ``steps_scale``, for CPU-sized runs), ``dropout``,
    ``decay_to_init``, ``mixup`` and ``resolution``, and ``steps_scale`` itself: the notebook
    compresses BiT-HyperRule's schedule by the same factor, so the rule and the trials keep
    supplementary A's ratio of steps (a trial of 16000 steps is 32 of the rule's 500 at any
    scale). The notebook must take those parameters (05_vtab does).
    """
    from bitkit.hyperrule import SearchSpace

    space, out = SearchSpace(), []
    for i in range(n):
        r = space.sample(i, seed)
        out.append({"trial": i, "lr": float(f"{r.schedule.base_lr:.4g}"),
                    "steps": max(5, round(r.schedule.total_steps * steps_scale)),
                    "dropout": round(r.dropout, 4), "decay_to_init": float(f"{r.decay_to_init:.3g}"),
                    "mixup": r.mixup_alpha, "resolution": r.crop, "steps_scale": steps_scale})
    return out


def run_dirs(out_dir: Path, runs: Sequence[Mapping[str, Any]]) -> list[Path]:
    width = len(str(max(len(runs) - 1, 0)))
    return [out_dir / f"run-{i:0{width}d}" for i in range(len(runs))]


def sweep(notebook: str | os.PathLike, runs: Sequence[Mapping[str, Any]],
          out_dir: str | os.PathLike, *, fixed: Mapping[str, Any] | None = None,
          stop_on_error: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
    """Run ``notebook`` once per parameter set in ``runs`` (plus ``fixed``), one after another.

    Returns one row per run (its parameters, status and metrics) and writes them to
    ``out_dir/summary.json``. A failed run is recorded and the sweep goes on unless
    ``stop_on_error``.
    """
    out = Path(out_dir)
    _claim_sweep_files(out, [SUMMARY])
    tensorboard = kwargs.pop("tensorboard", None)
    rows = []
    for params, folder in zip(runs, run_dirs(out, runs), strict=True):
        row: dict[str, Any] = {"run": folder.name, **params}
        try:
            result = run_notebook(notebook, {**(fixed or {}), **params}, folder, **kwargs,
                                  tensorboard=None if tensorboard is None else  # one per run
                                  Path(tensorboard) / folder.name)
            row.update(status="ok", seconds=round(result.seconds, 1), **result.metrics)
        except NotebookFailed as e:
            row.update(status="failed", error=e.error.splitlines()[0])
            if stop_on_error:
                rows.append(row)
                break
        rows.append(row)
        (out / SUMMARY).write_text(json.dumps(rows, indent=2, default=str))
    return rows


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of sweep rows: scalar columns only (lists and dicts are left out)."""
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in cols and (v is None or isinstance(v, (str, int, float, bool))):
                cols.append(k)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    table = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(t[i]) for t in table]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)) for t in table]
    return "\n".join(lines)


def sbatch_script(notebook: str | os.PathLike, runs: Sequence[Mapping[str, Any]],
                  out_dir: str | os.PathLike, *, gpus: int = 1, time_limit: str = "04:00:00",
                  cpus: int = 8, tensorboard: str | os.PathLike | None = None) -> str:
    """A SLURM array script: task ``i`` runs ``bitkit run`` with the parameters of run ``i``.

    Each run's parameters are written to ``out_dir/run-i/params.yaml`` by
    :func:`write_sbatch`; afterwards ``bitkit sweep --collect out_dir`` prints the table.
    With ``tensorboard``, run ``i`` writes its event files under ``tensorboard/run-i``.
    """
    out = Path(out_dir).resolve()
    nb = Path(notebook).resolve()
    tb = "" if tensorboard is None else (
        f" --tensorboard \"{Path(tensorboard).resolve()}/$(basename \"$RUN\")\"")
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name=bitkit-{nb.stem}",
        f"#SBATCH --array=0-{len(runs) - 1}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --gpus-per-task={gpus}" if gpus else "",
        f"#SBATCH --time={time_limit}",
        f"#SBATCH --output={out}/slurm-%A_%a.log",
        "set -euo pipefail",
        f"RUN=$(printf '{out}/run-%0{len(str(max(len(runs) - 1, 0)))}d' \"$SLURM_ARRAY_TASK_ID\")",
        f"{shlex.quote(sys.executable)} -m bitkit run {shlex.quote(str(nb))} "
        f"-f \"$RUN/params.yaml\" --out \"$RUN\"{tb}",
        "",
    ])


def _claim_sweep_files(out: Path, files: list[str]) -> None:
    """A sweep folder may be one of the user's: replace only files an earlier sweep wrote there,
    refuse a user's file of the same name (bitkit.fileio), leave everything else."""
    from bitkit.fileio import clear_written, record_written

    clear_written(out, SWEEP_WRITER, what="a sweep", outputs=files)
    record_written(out, SWEEP_WRITER, files)


def write_sbatch(notebook: str | os.PathLike, runs: Sequence[Mapping[str, Any]],
                 out_dir: str | os.PathLike, *, fixed: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> Path:
    """Write each run's ``params.yaml`` and ``out_dir/sweep.sbatch``; submit with ``sbatch``."""
    import yaml

    # Every run is checked before anything is written: a bad value fails here, not hours later
    # on the cluster. Hardware checks are skipped: the GPUs are the nodes', not this machine's.
    for params in runs:
        resolve_parameters(notebook, {**(fixed or {}), **params}, hardware=False)
    out = Path(out_dir)
    folders = run_dirs(out, runs)
    _claim_sweep_files(out, [SBATCH, *(f"{f.name}/{RUN_PARAMS}" for f in folders)])
    for params, folder in zip(runs, folders, strict=True):
        folder.mkdir(exist_ok=True)
        (folder / RUN_PARAMS).write_text(yaml.safe_dump({**(fixed or {}), **params},
                                                           sort_keys=False))
    script = out / SBATCH
    script.write_text(sbatch_script(notebook, runs, out, **kwargs))
    return script


def collect(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a finished (e.g. SLURM) sweep, read back from each run folder."""
    import yaml

    rows = []
    for folder in sorted(Path(out_dir).glob("run-*")):
        params = yaml.safe_load((folder / RUN_PARAMS).read_text()) if (
            folder / RUN_PARAMS).is_file() else {}
        metrics = folder / METRICS
        status = "ok" if metrics.is_file() else "missing"
        rows.append({"run": folder.name, **(params or {}), "status": status,
                     **(json.loads(metrics.read_text()) if metrics.is_file() else {})})
    return rows


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _pairs(values: Sequence[Sequence[str]] | None) -> dict[str, Any]:
    return {name: parse_value(value) for name, value in values or []}


def _logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)


def run_command(args: argparse.Namespace) -> int:
    """``bitkit run NOTEBOOK [-p NAME VALUE] [-f PARAMS.yaml] [--out DIR]``."""
    _logging(args.quiet)
    try:
        result = run_notebook(args.notebook, _pairs(args.parameter), args.out,
                              params_file=args.parameters_file, kernel=args.kernel,
                              cell_timeout=args.cell_timeout, log_output=not args.quiet,
                              tensorboard=args.tensorboard, solutions=args.solutions)
    except NotebookFailed as e:
        print(f"bitkit run: {e}", file=sys.stderr)
        return 1
    print(f"ran {result.notebook.name} in {result.seconds:.0f} s -> {result.out_dir}")
    for name in (result.executed.name, result.html.name, METRICS, PARAMETERS):
        print(f"  {name}{'' if (result.out_dir / name).exists() else '  (missing)'}")
    if result.metrics:
        print(json.dumps(result.metrics, indent=2))
    return 0


def _sweep_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.search and args.grid:
        raise ValueError("give either --grid axes or --search N, not both")
    if args.search:
        return search_trials(args.search, args.search_seed, steps_scale=args.steps_scale)
    if not args.grid:
        raise ValueError("nothing to sweep: give -g NAME V1,V2,... or --search N")
    return grid({name: parse_grid_values(name, values) for name, values in args.grid})


def sweep_command(args: argparse.Namespace) -> int:
    """``bitkit sweep NOTEBOOK -g NAME V1,V2 ... | --search N [--sbatch] [--collect]``."""
    _logging(True)
    out = Path(args.out or Path("runs") / f"{Path(args.notebook).stem}-sweep")
    if args.collect:
        print(summary_table(collect(out)))
        return 0
    runs = _sweep_runs(args)
    fixed = {**(parse_value_file(args.parameters_file)), **_pairs(args.parameter)}
    if args.sbatch:
        script = write_sbatch(args.notebook, runs, out, fixed=fixed, gpus=args.gpus,
                              tensorboard=args.tensorboard)
        print(f"wrote {script} ({len(runs)} array tasks). Submit: sbatch {script}\n"
              f"then: bitkit sweep {args.notebook} --collect --out {out}")
        return 0
    for params in runs:  # every run's parameters are checked before the first one starts
        resolve_parameters(args.notebook, {**fixed, **params})
    rows = sweep(args.notebook, runs, out, fixed=fixed, kernel=args.kernel,
                 cell_timeout=args.cell_timeout, log_output=not args.quiet,
                 tensorboard=args.tensorboard)
    print(summary_table(rows))
    print(f"\n{len(rows)} run(s), {sum(r['status'] == 'ok' for r in rows)} ok -> "
          f"{out / 'summary.json'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def parse_value_file(path: str | os.PathLike | None) -> dict[str, Any]:
    """A YAML mapping of parameter: value from ``path`` ({} for None)."""
    doc = read_parameters_file(path)
    return doc.data if doc else {}
