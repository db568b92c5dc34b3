"""One atomic write for every file bitkit writes: temp file in the same folder, fsync, rename."""

import os

import numpy as np
import pytest
import torch

from bitkit import checkpoint, dedup, ooc, weights
from bitkit.evaluate import report_from_logits
from bitkit.events import Event, JsonlLogger, read_jsonl
from bitkit.fileio import atomic_write, atomic_write_text, load_npz, save_npz
from bitkit.models import create


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "old")

    def half_then_crash(f):
        f.write(b"new but only ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["a.txt"]


@pytest.fixture()
def replaced(monkeypatch):
    """Every os.replace, with whether the source was fsynced first."""
    synced, calls = set(), []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.add(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src, dst):
        calls.append((os.path.realpath(src) in synced, os.path.dirname(os.path.abspath(src)),
                      os.path.abspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_every_writer_goes_through_atomic_write(tmp_path, replaced):
    def check(path):
        synced, folder, dst = replaced.pop()
        assert dst == str(path.resolve()) and synced and folder == str(path.parent.resolve())

    check(checkpoint.save(tmp_path / "ckpt.pt", {"step": 1}))
    report = report_from_logits(np.eye(3, dtype=np.float32), np.arange(3))
    check(report.save(tmp_path / "report.npz"))
    dup = dedup.DuplicateReport(np.array(["q"]), np.array([["u"]]), np.array([[0.9]]))
    check(dup.save(tmp_path / "dups.npz"))
    m = create("R14x0.25", num_classes=3)
    check(weights.save_npz(m, tmp_path / "w.npz"))
    check(weights.save_safetensors(m, tmp_path / "w.safetensors"))
    log = JsonlLogger(tmp_path / "metrics.jsonl")
    for e in (Event("start", 0, 4), Event("step", 1, 4), Event("step", 2, 4)):
        log(e)
    replaced.clear()
    log(Event("start", 1, 4))  # a resume rewinds the file: rewritten atomically
    check(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 1]
    g = np.random.default_rng(0)
    fg = ooc.Foreground.create("f", g.integers(0, 255, (8, 8, 3), dtype=np.uint8),
                               np.ones((8, 8), bool), 0, "thing")
    bg = ooc.Background.create("b", g.integers(0, 255, (16, 16, 3), dtype=np.uint8), "room")
    ooc.build([fg], [bg], tmp_path / "ooc", hf=False, progress=False)
    check(tmp_path / "ooc" / "metadata.jsonl")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 1


def test_npz_with_json_info_round_trips_without_pickle(tmp_path):
    arrays = {"ids": np.array(["a", "b"]), "x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = save_npz(tmp_path / "sub" / "r.npz", arrays, {"meta": {"k": 1}, "format": "t/1"})
    assert path == tmp_path / "sub" / "r.npz" and os.listdir(path.parent) == ["r.npz"]
    back, info = load_npz(path, "Thing")
    assert info == {"meta": {"k": 1}, "format": "t/1"} and set(back) == {"ids", "x"}
    for name, a in arrays.items():
        np.testing.assert_array_equal(back[name], a)
    with pytest.raises(ValueError, match="'info' is reserved"):
        save_npz(tmp_path / "bad.npz", {"info": np.zeros(1)}, {})
    with pytest.raises(FileNotFoundError, match="no thing report at"):
        load_npz(tmp_path / "missing.npz", "Thing", missing="thing report")
    np.savez(tmp_path / "plain.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="plain.npz is not a bitkit Thing"):
        load_npz(tmp_path / "plain.npz", "Thing")
