"""One checker for user input: run files, parameter files, notebook parameters, TrainConfig.

Each case is one a new user met: the message must name the file and line (or the field), what
would work and what was given, and the command must exit 2 without a traceback.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from bitkit import cli, inputs, runfile, runs
from bitkit.hyperrule import Schedule
from bitkit.train import TrainConfig

RUN_YAML = """\
model: R14x0.25
train_data: {data}
out_dir: {out}
train:
  batch_size: 8
  progress: false
  schedule: {{base_lr: 0.1, warmup_steps: 1, decay_steps: [], total_steps: 2}}
"""


@pytest.fixture()
def run_yaml(tmp_path):
    """A valid run file (YAML, one key per line) and a function that writes a variant of it."""
    import torch
    from conftest import Images  # the suite's tiny image set

    data = Images()
    torch.save({"images": data.x, "labels": data.y}, tmp_path / "train.pt")
    path = tmp_path / "run.yaml"
    text = RUN_YAML.format(data=tmp_path / "train.pt", out=tmp_path / "out")

    def write(new_text: str | None = None, **replace: str):
        body = text if new_text is None else new_text
        for old, new in replace.items():
            assert old in body
            body = body.replace(old, new)
        path.write_text(body)
        return path

    write()
    return write


def train_error(path, capsys) -> str:
    assert cli.main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("bitkit train: error: ")
    return err.removeprefix("bitkit train: error: ").strip()


def test_a_valid_run_file_passes_and_numbers_like_1e_minus_4_are_numbers(run_yaml):
    spec = runfile.load_run_config(run_yaml(**{"base_lr: 0.1": "base_lr: 1e-1"}))
    assert spec["train"]["schedule"] == Schedule(0.1, 1, (), 2)
    assert spec["recipe"] == "hyperrule" and spec["recipe_args"] == {}


def test_broken_yaml_names_the_file_line_and_column(run_yaml, capsys):
    path = run_yaml(**{"  batch_size: 8": "  batch_size: 8: 9"})
    err = train_error(path, capsys)
    assert err.startswith(f"{path}:5:") and "not valid YAML: mapping values are not allowed" in err
    assert "<unicode string>" not in err and "ScannerError" not in err


def test_a_quoted_number_says_to_drop_the_quotes(run_yaml, capsys):
    path = run_yaml(**{"batch_size: 8": 'batch_size: "64"'})
    assert train_error(path, capsys) == (
        f"{path}:5: field 'train.batch_size': expected a whole number >= 1, got '64' (text; "
        "write it without quotes for a number)")


def test_a_run_file_that_is_a_list_says_so(run_yaml, capsys):
    path = run_yaml("- model\n- out_dir\n")
    err = train_error(path, capsys)
    assert err.startswith(f"{path}: expected a YAML mapping of run-file key: value at the top "
                          "level, got ['model', 'out_dir']")
    assert "unknown key" not in err


def test_a_typo_under_train_gets_the_closest_field_and_its_line(run_yaml, capsys):
    path = run_yaml(**{"  progress: false": "  progres: false"})
    err = train_error(path, capsys)
    assert err.startswith(f"{path}:6: field 'train.progres': unknown name (did you mean "
                          "'progress'?); known: schedule, batch_size,")


def test_nested_and_recipe_arg_values_are_checked_by_type(run_yaml, capsys):
    path = run_yaml(**{"total_steps: 2": "total_steps: two"})
    assert train_error(path, capsys) == (
        f"{path}:7: field 'train.schedule.total_steps': expected a whole number, got 'two'")
    path = run_yaml(RUN_YAML.format(data="x.pt", out="o") + "recipe_args:\n  batch_size: big\n")
    assert train_error(path, capsys) == (
        f"{path}:9: field 'recipe_args.batch_size': expected a whole number, got 'big'")
    path = run_yaml(RUN_YAML.format(data="x.pt", out="o") + "recipe: hyperule\n")
    assert "field 'recipe': expected one of 'hyperrule', 'upstream', 'search' (did you mean " \
           "'hyperrule'?), got 'hyperule'" in train_error(path, capsys)
    path = run_yaml(**{"model: R14x0.25": "model: R15x1"})
    assert "field 'model': Unknown model 'R15x1'" in train_error(path, capsys)


def test_trainconfig_in_python_reads_like_the_run_file():
    schedule = Schedule(0.1, 1, (), 3)
    with pytest.raises(inputs.InputError, match=r"^TrainConfig: field 'batch_size': expected a "
                       r"whole number >= 1, got '64' \(text"):
        TrainConfig(schedule=schedule, batch_size="64")
    with pytest.raises(ValueError, match="field 'dropout': expected a number >= 0 and < 1"):
        TrainConfig(schedule=schedule, dropout=1.0)
    with pytest.raises(ValueError, match="field 'bf16': expected true or false, got 1"):
        TrainConfig(schedule=schedule, bf16=1)
    cfg = TrainConfig(schedule={"base_lr": 1, "warmup_steps": 0, "decay_steps": [2],
                                "total_steps": 3}, batch_size=np.int64(16), mixup_alpha=0)
    assert cfg.batch_size == 16 and type(cfg.batch_size) is int and cfg.mixup_alpha == 0.0
    assert cfg.schedule == Schedule(1.0, 0, (2,), 3)


def test_rules_reject_bools_as_numbers_and_nan():
    with pytest.raises(inputs.Invalid):
        inputs.integer()(True)
    with pytest.raises(inputs.Invalid):
        inputs.number()(float("nan"))
    with pytest.raises(inputs.Invalid):
        inputs.one_of(1, 2)(True)
    assert inputs.one_of(True, "auto")(True) is True
    assert inputs.list_of(inputs.integer(0), single=True)(3) == [3]
    with pytest.raises(inputs.Invalid) as e:
        inputs.list_of(inputs.integer(0))([1, -1])
    assert e.value.path == (1,) and "whole number >= 0" in e.value.describe()


# ------------------------------------------------------------------------- notebook parameters
@pytest.fixture()
def lesson_like(tmp_path):
    """A notebook whose parameters a lesson would have, checked by lesson.check_parameters."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(metadata={"kernelspec": {"name": "bitkit", "display_name": "bitkit",
                                               "language": "python"}})
    params = new_code_cell("steps = 100\nlr = 0.1\ntask = 'world-objects'\ndevice = 'auto'\n"
                           "processes = 1\ntasks = ['world-objects']\nnote = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell("from bitkit import lesson\nlesson.check_parameters("
                                      "steps=steps, task=task, device=device, tasks=tasks)")]
    path = tmp_path / "lesson.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_an_unknown_notebook_parameter_gets_the_closest_name(lesson_like):
    with pytest.raises(ValueError, match=r"^lesson.ipynb has no parameter 'stpes' \(did you mean "
                       r"'steps'\?\); its parameters are: steps, lr,"):
        runs.resolve_parameters(lesson_like, {"stpes": 3})


def test_notebook_values_are_checked_before_a_kernel_starts(lesson_like, tmp_path):
    with pytest.raises(ValueError, match=r"lesson.ipynb: parameter steps = '100' \(text; write "
                       r"it without quotes for a number\): must be a whole number >= 5"):
        runs.resolve_parameters(lesson_like, {"steps": "100"})
    with pytest.raises(ValueError, match="parameter task = 'world-objcts': Unknown dataset "
                       "'world-objcts'. Did you mean 'world-objects'"):
        runs.resolve_parameters(lesson_like, {"task": "world-objcts"})
    with pytest.raises(ValueError, match="parameter lr = 'fast': must be a number"):
        runs.resolve_parameters(lesson_like, {"lr": "fast"})  # typed by its default
    assert runs.resolve_parameters(lesson_like, {"lr": 1e-4, "note": [1, "x"], "steps": 5}) == {
        "lr": 1e-4, "note": [1, "x"], "steps": 5}


def test_steps_null_is_the_recipes_own_schedule_in_every_lesson():
    """README and lessons tell GPU users `-p steps null`; it must pass the pre-kernel check."""
    from pathlib import Path

    for nb in sorted((Path(__file__).parents[1] / "notebooks").glob("0*.ipynb")):
        if "steps" in runs.notebook_parameters(nb):
            assert runs.resolve_parameters(nb, {"steps": None})["steps"] is None, nb.name


def test_a_parameter_file_error_names_its_line(lesson_like, tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("steps: 50\ntsk: world-objects\n")
    with pytest.raises(ValueError, match=rf"^{f}:2: parameter of lesson.ipynb 'tsk': unknown name "
                       r"\(did you mean 'task'\?\)"):
        runs.resolve_parameters(lesson_like, {}, f)
    f.write_text("steps: 50\nlr: fast\n")
    with pytest.raises(ValueError, match=rf"^{f}:2: lesson.ipynb: parameter lr = 'fast'"):
        runs.resolve_parameters(lesson_like, {}, f)
    f.write_text("steps: [1, 2\n")
    with pytest.raises(ValueError, match=rf"^{f}:2:1: not valid YAML"):
        runs.resolve_parameters(lesson_like, {}, f)
    f.write_text("- steps\n")
    with pytest.raises(ValueError, match=rf"^{f}: expected a YAML mapping of parameter: value"):
        runs.resolve_parameters(lesson_like, {}, f)


def test_cli_run_reports_a_bad_value_in_one_line(lesson_like, capsys):
    assert cli.main(["run", str(lesson_like), "-p", "steps", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bitkit run: error: lesson.ipynb: parameter steps = 'abc': must be a "
                          "whole number >= 5") and "Traceback" not in err


# ------------------------------------------------------------------------------------ sweeps
def test_grid_values_keep_bracketed_lists_and_read_numbers():
    assert runs.parse_grid_values("tasks", "[world-objects, digits],[world-count]") == [
        ["world-objects", "digits"], ["world-count"]]
    assert runs.parse_grid_values("lr", "1e-3,0.01, 3") == [0.001, 0.01, 3]
    assert runs.parse_grid_values("task", "digits:train,'a,b'") == ["digits:train", "a,b"]
    with pytest.raises(ValueError, match=r"-g tasks '\[a, b': cannot read the values"):
        runs.parse_grid_values("tasks", "[a, b")


def test_sbatch_keeps_list_values_and_checks_every_value_first(lesson_like, tmp_path, capsys):
    out = tmp_path / "cluster"
    argv = ["sweep", str(lesson_like), "-g", "tasks", "[world-objects, digits],[world-count]",
            "-p", "device", "cuda", "-p", "processes", "4", "--sbatch", "--out", str(out)]
    assert cli.main(argv) == 0  # cuda and 4 processes are the nodes' business, not this CPU's
    assert "2 array tasks" in capsys.readouterr().out
    assert yaml.safe_load((out / "run-0" / "params.yaml").read_text())["tasks"] == [
        "world-objects", "digits"]
    assert yaml.safe_load((out / "run-1" / "params.yaml").read_text())["tasks"] == [
        "world-count"]
    bad = tmp_path / "bad"
    assert cli.main(["sweep", str(lesson_like), "-g", "steps", "10,ten", "--sbatch", "--out",
                     str(bad)]) == 2
    assert "parameter steps = 'ten': must be a whole number >= 5" in capsys.readouterr().err
    assert not bad.exists()  # nothing written for a sweep that would fail on the cluster


def test_run_files_written_by_the_lessons_pass_the_checker(tmp_path):
    """The torchrun path of the lessons writes run files; they must read back unchanged."""
    spec = {"model": "R14x0.25", "weights": str(tmp_path / "start.pt"), "num_classes": 3,
            "train_data": "world-objects:train", "out_dir": str(tmp_path), "recipe": "hyperrule",
            "recipe_args": {"batch_size": 8}, "resolution": [40, 32],
            "train": {"schedule": {"base_lr": 0.003, "warmup_steps": 1, "decay_steps": [3],
                                   "total_steps": 5}, "seed": 0, "progress": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    checked = runfile.load_run_config(tmp_path / "run.yaml")
    assert checked["recipe_args"] == {"batch_size": 8} and checked["resolution"] == [40, 32]
    assert checked["train"]["schedule"] == Schedule(0.003, 1, (3,), 5)


def test_a_folder_or_a_binary_file_as_run_file_says_so(tmp_path, capsys):
    assert train_error(tmp_path, capsys) == f"run config {tmp_path} is a folder; give the YAML " \
                                            "file in it"
    (tmp_path / "model.pt").write_bytes(b"\x89PNG\x00\x01")
    assert train_error(tmp_path / "model.pt", capsys).startswith(
        f"{tmp_path / 'model.pt'}: not a YAML file (not UTF-8 text")


def test_bitkit_run_passes_the_checked_value_a_single_task_becomes_a_list():
    # `bitkit run 07_duplicates.ipynb -p tasks world-texture`: the lesson loops over `tasks`;
    # the raw text would be walked letter by letter, minutes into the run
    from pathlib import Path

    lesson07 = Path(__file__).resolve().parents[1] / "notebooks" / "07_duplicates.ipynb"
    given = runs.resolve_parameters(lesson07, {"tasks": "world-texture", "k": 2})
    assert given == {"tasks": ["world-texture"], "k": 2}
