"""Checkpoints: atomic, loadable without pickle, exact on resume, written on preemption."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import write_run

from bitkit import checkpoint
from bitkit.events import RunControl, read_jsonl

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}

KILL_AT_STEP_6 = """
import os, signal, sys
from bitkit.runfile import run

def kill(event):
    if event.kind == "step" and event.step == 6:
        os.kill(os.getpid(), signal.SIGKILL)  # no handler, no cleanup: like an OOM kill

run(sys.argv[1], observers=[kill])
"""


def train_cli(run_file):
    return subprocess.Popen([sys.executable, "-m", "bitkit", "train", "--config", str(run_file)],
                            cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    # Dropout and MixUp on, so the RNG state and the data position must both come back exactly.
    kw = dict(steps=10, mixup_alpha=0.2, dropout=0.3, checkpoint_every=4, eval_every=2,
              schedule={"base_lr": 0.1, "warmup_steps": 2, "decay_steps": [7], "total_steps": 10})
    reference = write_run(tmp_path, "reference", **kw)
    interrupted = write_run(tmp_path, "interrupted", **kw)
    (tmp_path / "kill.py").write_text(KILL_AT_STEP_6)
    ref = train_cli(reference)
    killed = subprocess.run([sys.executable, str(tmp_path / "kill.py"), str(interrupted)],
                            cwd=REPO, env=ENV, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert checkpoint.load(tmp_path / "interrupted" / "checkpoint.pt")["step"] == 4  # mid-way
    resumed = train_cli(interrupted)
    assert resumed.wait(120) == 0, resumed.stderr.read()
    assert ref.wait(120) == 0, ref.stderr.read()

    a = checkpoint.load(tmp_path / "reference" / "checkpoint.pt")
    b = checkpoint.load(tmp_path / "interrupted" / "checkpoint.pt")
    assert a["step"] == b["step"] == 10
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name  # bit for bit
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    # metrics.jsonl: the 2 steps lost after the checkpoint were dropped and redone identically
    steps = [r for r in read_jsonl(tmp_path / "interrupted" / "metrics.jsonl")
             if r["kind"] == "step"]
    ref_steps = [r for r in read_jsonl(tmp_path / "reference" / "metrics.jsonl")
                 if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 11))
    assert [r["metrics"]["loss"] for r in steps] == [r["metrics"]["loss"] for r in ref_steps]


def test_sigterm_writes_a_loadable_checkpoint_and_exits_cleanly(tmp_path):
    run_file = write_run(tmp_path, "long", steps=5000)
    proc = train_cli(run_file)
    metrics = tmp_path / "long" / "metrics.jsonl"
    deadline = time.time() + 120
    while not any(r["kind"] == "step" for r in read_jsonl(metrics)):
        assert proc.poll() is None and time.time() < deadline, "the run did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    state = checkpoint.load(tmp_path / "long" / "checkpoint.pt")  # weights_only=True inside
    assert 1 <= state["step"] < 5000
    assert set(state) >= {"model", "optimizer", "rng", "data", "config", "identity", "step"}
    end = read_jsonl(metrics)[-1]
    assert (end["kind"], end["step"], end["reason"]) == ("end", state["step"],
                                                          "stopped: preempted by SIGTERM")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"step": 1, "w": torch.ones(3)})

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"step": 2})
    assert checkpoint.load(path)["step"] == 1  # the old one is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


class Sneaky:
    """Any class: unpickling it could run code, so weights_only loading must refuse it."""


def test_load_refuses_pickled_code_and_foreign_files(tmp_path):
    torch.save({"format": checkpoint.FORMAT, "obj": Sneaky()}, tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match="not a readable bitkit checkpoint"):
        checkpoint.load(tmp_path / "pickle.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="Delete it to start over"):
        checkpoint.load(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a bitkit checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.pt")


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    checkpoint.save(tmp_path / "r.pt", {"rng": checkpoint.rng_state()})
    first = (torch.rand(3), np.random.rand(3), random.random(), np.random.standard_normal())
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "r.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.standard_normal())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2:] == again[2:]


def test_preemption_handler_turns_signals_into_a_stop_request():
    before = signal.getsignal(signal.SIGUSR1)
    control = RunControl()
    with checkpoint.preemption_handler(control):
        os.kill(os.getpid(), signal.SIGUSR1)
        assert control.stop_requested and control.reason == "preempted by SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_check_compatible_lists_every_difference():
    saved = {"model": "R14x0.25", "seed": 0, "parameters": {"a": [1, 2], "b": [3]}}
    now = {"model": "R26x0.25", "seed": 1, "parameters": {"a": [1, 3], "c": [3]}}
    with pytest.raises(checkpoint.CheckpointMismatch) as e:
        checkpoint.check_compatible(saved, now, "x.pt")
    msg = str(e.value)
    assert "model: checkpoint 'R14x0.25', this run 'R26x0.25'" in msg
    assert "seed: checkpoint 0, this run 1" in msg
    assert "1 only in the checkpoint (e.g. b)" in msg and "1 only in this model (e.g. c)" in msg
    assert "a: [1, 2] vs [1, 3]" in msg and "new out_dir" in msg
    checkpoint.check_compatible(saved, dict(saved), "x.pt")  # identical: no error
