"""TensorBoardLogger: what TensorBoard reads back is what metrics.jsonl says, across a resume."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Images

# tensorboard is in the dev extra: a missing one fails here rather than skipping the checks
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import api_pb2, metadata  # noqa: E402

from bitkit.events import TensorBoardLogger, read_jsonl
from bitkit.hyperrule import Schedule
from bitkit.models import create
from bitkit.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = 8  # more than 5: eval reports top5 too


def config(**kw):
    return TrainConfig(batch_size=8, progress=False, schedule=Schedule(0.1, 1, (4,), 6),
                       eval_every=2, checkpoint_every=2, **kw)


def run(out, cfg, *extra):
    torch.manual_seed(0)
    model = create("R14x0.25", num_classes=CLASSES)
    return fit(model, Images(classes=CLASSES), cfg, eval_data=Images(24, classes=CLASSES, seed=1),
               out_dir=out, observers=[TensorBoardLogger(out, cfg), *extra])


def read(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def f32(x):
    return float(np.float32(x))


def assert_scalars_match_jsonl(acc, records, kinds=("step", "eval")):
    """Every step/eval metric in metrics.jsonl is a scalar at the same step, once, same value."""
    for kind, prefix in (("step", "train"), ("eval", "eval")):
        if kind not in kinds:
            continue
        rows = [r for r in records if r["kind"] == kind]
        for key in rows[0]["metrics"]:
            got = acc.Scalars(f"{prefix}/{key}")
            assert [s.step for s in got] == [r["step"] for r in rows], (prefix, key)
            assert [s.value for s in got] == [f32(r["metrics"][key]) for r in rows], (prefix, key)
            assert [s.wall_time for s in got] == [r["time"] for r in rows]


def text(acc, tag):
    return [(t.step, t.tensor_proto.string_val[0].decode()) for t in acc.Tensors(tag)]


def test_scalars_text_and_hparams_match_the_run(tmp_path):
    seen_at_eval = {}

    def peek(event):  # runs after the logger: an eval event must already be on disk (flushed)
        if event.kind == "eval" and event.step == 2:
            acc = read(tmp_path)
            seen_at_eval.update(loss=[s.step for s in acc.Scalars("train/loss")],
                                top1=[s.step for s in acc.Scalars("eval/top1")])

    result = run(tmp_path, config(), peek)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    acc = read(tmp_path)

    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/lr", "train/examples_per_s",
                                          "eval/loss", "eval/top1", "eval/top5"}
    assert_scalars_match_jsonl(acc, records)
    assert [s.step for s in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [s.value for s in acc.Scalars("train/lr")] == [f32(v) for v in (0, .1, .1, .1, .1, .01)]
    assert [s.step for s in acc.Scalars("eval/top1")] == [2, 4, 6]
    assert acc.Scalars("eval/top1")[-1].value == f32(result.eval["top1"])
    assert seen_at_eval == {"loss": [1, 2], "top1": [2]}

    [(step, cfg_text)] = text(acc, "run/config/text_summary")
    assert step == 0 and cfg_text.startswith("Steps 0 to 6.")
    assert "| `schedule.base_lr` | `0.1` |" in cfg_text and "| `eval_every` | `2` |" in cfg_text
    assert text(acc, "run/end/text_summary") == [(6, "step 6 of 6: done")]

    start = metadata.parse_session_start_info_plugin_data(
        acc.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content)
    assert start.hparams["schedule.base_lr"].number_value == 0.1
    assert start.hparams["schedule.decay_steps"].string_value == "[4]"
    assert start.hparams["bf16"].bool_value is True
    assert start.hparams["loss"].string_value == "auto"
    end = metadata.parse_session_end_info_plugin_data(
        acc.SummaryMetadata(metadata.SESSION_END_INFO_TAG).plugin_data.content)
    assert end.status == api_pb2.STATUS_SUCCESS
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("how", ["interrupted", "stopped"])
def test_a_resumed_run_continues_the_curves_without_duplicates(tmp_path, how):
    """``interrupted``: killed at step 3, after the checkpoint at step 2: TensorBoard must hide
    the killed run's step 3 (the resumed run logs its own). ``stopped``: a clean stop at step 3
    writes a checkpoint there and the resumed run starts at step 4."""

    def halt(event):
        if event.kind == "step" and event.step == 3:
            if how == "interrupted":
                raise KeyboardInterrupt
            event.request_stop("test")

    if how == "interrupted":
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, config(), halt)
    else:
        assert run(tmp_path, config(), halt).reason == "stopped: test"
    first = read(tmp_path)
    assert [s.step for s in first.Scalars("train/loss")] == [1, 2, 3]  # the killed run logged 3

    result = run(tmp_path, config())
    assert result.reason == "done" and result.step == 6
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    acc = read(tmp_path)
    assert_scalars_match_jsonl(acc, records)  # one value per step: the resumed run's
    assert [s.step for s in acc.Scalars("eval/top1")] == [2, 4, 6]
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    resumed_at = 2 if how == "interrupted" else 3
    assert [s for s, _ in text(acc, "run/config/text_summary")] == [0, resumed_at]
    assert text(acc, "run/config/text_summary")[1][1].startswith(
        f"Steps {resumed_at} to 6 (resumed at step {resumed_at}).")
    # The HParams dashboard keeps the first session end it reads: only the final one is written.
    assert [e.step for e in acc.Tensors(metadata.SESSION_END_INFO_TAG)] == [6]


def test_nothing_is_written_before_start(tmp_path):
    # A logger built on every rank of a torchrun job: fit calls it on rank 0 only, and only a
    # start event opens a file.
    logger = TensorBoardLogger(tmp_path / "tb", {"model": "R14x0.25", "train": {"seed": 0}})
    assert not (tmp_path / "tb").exists()
    logger.close()
    assert logger.config == {"model": "R14x0.25", "train.seed": 0}


def test_without_tensorboard_import_works_and_the_logger_says_how_to_install():
    code = ("import sys; sys.modules['tensorboard'] = None\n"  # as if not installed
            "import bitkit.events, bitkit.train\n"
            "try:\n"
            "    bitkit.events.TensorBoardLogger('unused')\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], check=True).stdout
    assert "pip install 'bitkit[tensorboard]'" in out and "pip install tensorboard" in out


def test_a_run_file_with_tensorboard_true_writes_into_its_out_dir(tmp_path):
    """``tensorboard: true`` in a run file: the same scalars, in out_dir, for torchrun jobs."""
    import json

    from conftest import write_run

    from bitkit import runfile

    path = write_run(tmp_path, steps=3)
    spec = json.loads(path.read_text())
    path.write_text(json.dumps({**spec, "tensorboard": True}))
    result = runfile.run(path)
    out = tmp_path / "run"
    acc = read(out)
    assert result.step == 3 and [s.step for s in acc.Scalars("train/loss")] == [1, 2, 3]
    assert_scalars_match_jsonl(acc, read_jsonl(out / "metrics.jsonl"))
    assert "R14x0.25" in text(acc, "run/config/text_summary")[0][1]  # the run file's own keys


NOTEBOOK_FIT = """
import torch
from torch.utils.data import TensorDataset
from bitkit.hyperrule import Schedule
from bitkit.models import create
from bitkit.train import TrainConfig, fit
torch.manual_seed(0)
data = TensorDataset(torch.randn(16, 3, 16, 16), torch.randint(0, 3, (16,)))
fit(create("R14x0.25", num_classes=3), data,
    TrainConfig(batch_size=8, progress=False, schedule=Schedule(0.1, 1, (), steps)),
    out_dir="train")
"""


def test_bitkit_run_tensorboard_follows_every_fit_of_a_notebook(tmp_path):
    """``bitkit run NB --tensorboard DIR``: a papermill job's runs show in TensorBoard."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from bitkit import cli, runs

    nb = new_notebook(metadata={"kernelspec": {"name": "bitkit", "display_name": "bitkit",
                                               "language": "python"}})
    params = new_code_cell("steps = 2")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(NOTEBOOK_FIT)]
    nbformat.write(nb, str(tmp_path / "fit.ipynb"))
    assert cli.main(["run", str(tmp_path / "fit.ipynb"), "--out", str(tmp_path / "out"),
                     "--tensorboard", str(tmp_path / "tb"), "--quiet"]) == 0
    acc = read(tmp_path / "tb" / "train")  # named after the fit's out_dir
    assert [s.step for s in acc.Scalars("train/loss")] == [1, 2]
    assert_scalars_match_jsonl(acc, read_jsonl(tmp_path / "out" / "train" / "metrics.jsonl"),
                               kinds=("step",))  # this fit has no eval data
    assert runs.TENSORBOARD_ENV not in __import__("os").environ  # restored after the run
    script = runs.sbatch_script(tmp_path / "fit.ipynb", [{}, {}], tmp_path / "s",
                                tensorboard=tmp_path / "tb")
    assert f'--tensorboard "{tmp_path / "tb"}/$(basename "$RUN")"' in script
