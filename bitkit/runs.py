"""Batch runs of the lesson notebooks: ``bitkit run`` and ``bitkit sweep``.

``bitkit run NOTEBOOK -p name value ... [-f params.yaml] [--out DIR]`` executes one notebook
headless with papermill (the project's ``bitkit`` kernel, a per-cell timeout, cell output logged)
and leaves in ``DIR``:

- ``<notebook>.ipynb``: the executed copy, outputs included;
- ``<notebook>.html``: the same as a standalone HTML page (plots embedded, viewable offline);
- ``metrics.json``: the headline numbers the notebook wrote (``bitkit.lesson.save_metrics``);
- ``parameters.yaml``: the parameters used (the notebook's defaults overridden by yours).

A failing cell makes the command exit non-zero, printing the cell's source and its error; the
executed copy and HTML are still written, so the failure can be read in context.

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
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KERNEL = "bitkit"
METRICS = "metrics.json"
PARAMETERS = "parameters.yaml"
DEFAULT_CELL_TIMEOUT = 3600  # seconds: a single cell longer than an hour is a hung cell
RUN_DIR_ENV = "BITKIT_RUN_DIR"
QUIET_ENV = "BITKIT_RUN_QUIET"


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
    """A command-line value as YAML: ``3`` -> 3, ``0.1`` -> 0.1, ``true``, ``[1, 2]``, ``null``;
    anything else stays a string (``world-objects``, ``BiT-M-R50x1.npz``)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


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


def resolve_parameters(notebook: str | os.PathLike, given: Mapping[str, Any],
                       params_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """Defaults of ``notebook`` < ``params_file`` (YAML mapping) < ``given``; unknown names fail
    here, before a kernel starts, with the list of known ones."""
    defaults = notebook_parameters(notebook)
    merged: dict[str, Any] = {}
    merged.update(parse_value_file(params_file))
    merged.update(given)
    unknown = sorted(set(merged) - set(defaults))
    if unknown:
        raise ValueError(f"{Path(notebook).name} has no parameter(s) {', '.join(unknown)}; its "
                         f"parameters are: {', '.join(defaults)}")
    return _absolute_paths(merged, Path.cwd())


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


def export_html(notebook: str | os.PathLike, html: str | os.PathLike) -> Path:
    """The executed notebook as one HTML file (plotly figures carry their own plotly.js)."""
    import nbconvert
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    html = Path(html)
    html.write_text(body, encoding="utf-8")
    return html


def _failure(nb_path: Path, out_dir: Path, exc: Exception) -> NotebookFailed:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        tb = "\n".join(exc.traceback[-6:]) if exc.traceback else ""
        import re

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
) -> RunResult:
    """Execute ``notebook`` with ``parameters`` into ``out_dir`` (default ``runs/<name>``).

    The kernel runs with the output folder as its working directory, so whatever the notebook
    writes (``metrics.json``, checkpoints, built datasets) lands next to the executed copy.
    Raises :class:`NotebookFailed` when a cell fails (after writing the executed copy and HTML).
    """
    import papermill

    nb_path = Path(notebook).resolve()
    params = resolve_parameters(nb_path, dict(parameters or {}), params_file)
    check_kernel(kernel)
    out = Path(out_dir if out_dir is not None else Path("runs") / nb_path.stem).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS).unlink(missing_ok=True)  # a stale file must not pass for this run's numbers
    _write_parameters(out / PARAMETERS, nb_path, params)
    executed = out / nb_path.name
    saved = {k: os.environ.get(k) for k in (RUN_DIR_ENV, QUIET_ENV, *(env or {}))}
    os.environ.update({RUN_DIR_ENV: str(out), QUIET_ENV: "0" if progress else "1", **(env or {})})
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(nb_path), str(executed), parameters=params,
                                   kernel_name=kernel, cwd=str(out), log_output=log_output,
                                   progress_bar=progress, execution_timeout=cell_timeout)
    except Exception as e:  # noqa: BLE001 - any failure is reported with its cell
        failure = _failure(nb_path, out, e)
        if html and executed.exists():
            export_html(executed, out / nb_path.with_suffix(".html").name)
        raise failure from e
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result = RunResult(nb_path, out, params, seconds=time.perf_counter() - started)
    if html:
        export_html(executed, result.html)
    if (out / METRICS).is_file():
        result.metrics = json.loads((out / METRICS).read_text())
    return result


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
    ``decay_to_init``, ``mixup`` and ``resolution``; the notebook must take those parameters
    (05_vtab does).
    """
    from bitkit.hyperrule import SearchSpace

    space, out = SearchSpace(), []
    for i in range(n):
        r = space.sample(i, seed)
        out.append({"trial": i, "lr": float(f"{r.schedule.base_lr:.4g}"),
                    "steps": max(5, round(r.schedule.total_steps * steps_scale)),
                    "dropout": round(r.dropout, 4), "decay_to_init": float(f"{r.decay_to_init:.3g}"),
                    "mixup": r.mixup_alpha, "resolution": r.crop})
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
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for params, folder in zip(runs, run_dirs(out, runs), strict=True):
        row: dict[str, Any] = {"run": folder.name, **params}
        try:
            result = run_notebook(notebook, {**(fixed or {}), **params}, folder, **kwargs)
            row.update(status="ok", seconds=round(result.seconds, 1), **result.metrics)
        except NotebookFailed as e:
            row.update(status="failed", error=e.error.splitlines()[0])
            if stop_on_error:
                rows.append(row)
                break
        rows.append(row)
        (out / "summary.json").write_text(json.dumps(rows, indent=2, default=str))
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
                  cpus: int = 8) -> str:
    """A SLURM array script: task ``i`` runs ``bitkit run`` with the parameters of run ``i``.

    Each run's parameters are written to ``out_dir/run-i/params.yaml`` by
    :func:`write_sbatch`; afterwards ``bitkit sweep --collect out_dir`` prints the table.
    """
    out = Path(out_dir).resolve()
    nb = Path(notebook).resolve()
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
        f"{shlex.quote(sys.executable)} -m bitkit.cli run {shlex.quote(str(nb))} "
        "-f \"$RUN/params.yaml\" --out \"$RUN\"",
        "",
    ])


def write_sbatch(notebook: str | os.PathLike, runs: Sequence[Mapping[str, Any]],
                 out_dir: str | os.PathLike, *, fixed: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> Path:
    """Write each run's ``params.yaml`` and ``out_dir/sweep.sbatch``; submit with ``sbatch``."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for params, folder in zip(runs, run_dirs(out, runs), strict=True):
        folder.mkdir(exist_ok=True)
        resolve_parameters(notebook, {**(fixed or {}), **params})  # fail now, not on the cluster
        (folder / "params.yaml").write_text(yaml.safe_dump({**(fixed or {}), **params},
                                                           sort_keys=False))
    script = out / "sweep.sbatch"
    script.write_text(sbatch_script(notebook, runs, out, **kwargs))
    return script


def collect(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a finished (e.g. SLURM) sweep, read back from each run folder."""
    import yaml

    rows = []
    for folder in sorted(Path(out_dir).glob("run-*")):
        params = yaml.safe_load((folder / "params.yaml").read_text()) if (
            folder / "params.yaml").is_file() else {}
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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", help="path to a .ipynb (e.g. notebooks/00_quickstart.ipynb)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a parameter (value read as YAML: 3, 0.1, true, [1, 2], text)")
    p.add_argument("-f", "--parameters-file", metavar="PARAMS.yaml",
                   help="a YAML mapping of parameters (-p wins over it)")
    p.add_argument("--cell-timeout", type=int, default=DEFAULT_CELL_TIMEOUT, metavar="SECONDS",
                   help=f"fail a cell that runs longer than this (default {DEFAULT_CELL_TIMEOUT})")
    p.add_argument("--kernel", default=KERNEL, help=f"Jupyter kernel name (default {KERNEL})")
    p.add_argument("--quiet", action="store_true", help="do not echo cell output while running")


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``bitkit run`` and ``bitkit sweep``."""
    p = subparsers.add_parser(
        "run", help="execute a notebook headless (papermill) with parameters",
        description="Execute a lesson notebook with papermill. The output folder receives the "
                    "executed notebook, an HTML export, metrics.json and parameters.yaml.")
    _common(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<notebook name>)")
    p.set_defaults(func=_run_cli)

    s = subparsers.add_parser(
        "sweep", help="run a notebook over a parameter grid or random-search trials",
        description="Fan a notebook out over a grid (-g) or the supplementary-A random search "
                    "(--search N), sequentially here or as a SLURM array (--sbatch).")
    _common(s)
    s.add_argument("-g", "--grid", nargs=2, action="append", metavar=("NAME", "V1,V2,..."),
                   help="an axis of the grid: comma-separated values (each read as YAML)")
    s.add_argument("--search", type=int, metavar="N",
                   help="the first N supplementary-A random-search trials (bitkit.hyperrule)")
    s.add_argument("--search-seed", type=int, default=0)
    s.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply each trial's steps (e.g. 0.01 for a CPU-sized search)")
    s.add_argument("--out", metavar="DIR", help="sweep folder (default runs/<notebook>-sweep)")
    s.add_argument("--sbatch", action="store_true",
                   help="write a SLURM array script (and per-run params) instead of running")
    s.add_argument("--gpus", type=int, default=1, help="GPUs per array task (with --sbatch)")
    s.add_argument("--collect", action="store_true",
                   help="only print the table of an existing sweep folder (e.g. after SLURM)")
    s.set_defaults(func=_sweep_cli)


def _logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)


def _run_cli(args: argparse.Namespace) -> int:
    _logging(args.quiet)
    try:
        result = run_notebook(args.notebook, _pairs(args.parameter), args.out,
                              params_file=args.parameters_file, kernel=args.kernel,
                              cell_timeout=args.cell_timeout, log_output=not args.quiet)
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
    return grid({name: [parse_value(v) for v in values.split(",")] for name, values in args.grid})


def _sweep_cli(args: argparse.Namespace) -> int:
    _logging(True)
    out = Path(args.out or Path("runs") / f"{Path(args.notebook).stem}-sweep")
    if args.collect:
        print(summary_table(collect(out)))
        return 0
    runs = _sweep_runs(args)
    fixed = {**(parse_value_file(args.parameters_file)), **_pairs(args.parameter)}
    if args.sbatch:
        script = write_sbatch(args.notebook, runs, out, fixed=fixed, gpus=args.gpus)
        print(f"wrote {script} ({len(runs)} array tasks). Submit: sbatch {script}\n"
              f"then: bitkit sweep {args.notebook} --collect --out {out}")
        return 0
    for params in runs:  # every run's parameters are checked before the first one starts
        resolve_parameters(args.notebook, {**fixed, **params})
    rows = sweep(args.notebook, runs, out, fixed=fixed, kernel=args.kernel,
                 cell_timeout=args.cell_timeout, log_output=not args.quiet)
    print(summary_table(rows))
    print(f"\n{len(rows)} run(s), {sum(r['status'] == 'ok' for r in rows)} ok -> "
          f"{out / 'summary.json'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def parse_value_file(path: str | os.PathLike | None) -> dict[str, Any]:
    """A YAML mapping of parameter: value from ``path`` ({} for None)."""
    import yaml

    if path is None:
        return {}
    f = Path(path)
    if not f.is_file():
        raise FileNotFoundError(f"parameter file {f} does not exist")
    loaded = yaml.safe_load(f.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{f} must be a YAML mapping of parameter: value")
    return loaded
