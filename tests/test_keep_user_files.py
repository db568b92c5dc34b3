"""Reusing a folder removes only what bitkit wrote there: a user's files survive, byte for byte.

Each writer that fills a folder a user names (``ooc.build`` and its panel, the lessons' torchrun
path, ``bitkit run --out``) is run on a folder that already holds ``notes.txt`` and
``mine/data.csv``: it either refuses (dataset folders) with a message naming the folder, the
files and the fix, or proceeds and removes only its own earlier files.
"""

import hashlib
import json
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from bitkit import checkpoint, lesson, ooc, runfile, runs
from bitkit.fileio import (
    WRITTEN,
    ForeignFilesError,
    atomic_write_text,
    clear_written,
    foreign_files,
    record_written,
)


def user_files(folder: Path) -> dict[str, str]:
    """A user's notes and a file of theirs in a sub-folder; returns their digests."""
    (folder / "mine").mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes, one of a kind\n")
    (folder / "mine" / "data.csv").write_bytes(b"a,b\n1,2\n")
    return digests(folder, ["notes.txt", "mine/data.csv"])


def digests(folder: Path, names: list[str]) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# ---------------------------------------------------------------------------- the helper


def test_clear_removes_only_recorded_files_and_their_new_folders(tmp_path):
    out = tmp_path / "out"
    mine = user_files(out)
    record_written(out, "w", ["a.txt", "deep/er/b.bin", "mine/c.txt"])
    for rel in ("a.txt", "deep/er/b.bin", "mine/c.txt"):
        atomic_write_text(out / rel, rel)
    (out / ".a.txt.k3j2_x.tmp").write_text("half")  # a killed atomic write of a.txt
    assert foreign_files(out, "w") == ["mine/data.csv", "notes.txt"]
    assert clear_written(out, "w", what="x", outputs=["a.txt"], remove=False) == [
        ".a.txt.k3j2_x.tmp", "a.txt", "deep/er/b.bin", "mine/c.txt"]
    removed = clear_written(out, "w", what="x", outputs=["a.txt"])
    assert removed == [".a.txt.k3j2_x.tmp", "a.txt", "deep/er/b.bin", "mine/c.txt"]
    # deep/ was bitkit's and is gone; mine/ existed before the record, so it stays
    assert tree(out) == ["mine", "mine/data.csv", "notes.txt"]
    assert digests(out, list(mine)) == mine


def test_refusals_name_the_folder_a_few_files_and_the_fix_and_remove_nothing(tmp_path):
    out = tmp_path / "out"
    mine = user_files(out)
    for i in range(7):
        (out / f"extra-{i}.txt").write_text(str(i))
    (out / "empty-of-mine").mkdir()
    record_written(out, "w", ["a.txt"])
    (out / "a.txt").write_text("ours")
    before = tree(out)
    with pytest.raises(ForeignFilesError) as e:
        clear_written(out, "w", what="a dataset")
    msg = str(e.value)
    assert str(out) in msg and "10 file(s) bitkit did not write" in msg
    assert "empty-of-mine/" in msg and "and 5 more" in msg
    assert "Choose another folder, or move or remove those files yourself." in msg
    assert isinstance(e.value, FileExistsError) and len(e.value.files) == 10
    assert tree(out) == before and digests(out, list(mine)) == mine
    # outputs given: foreign files are kept unless they sit where the run writes
    (out / "result.json").write_text("user's result")
    with pytest.raises(ForeignFilesError, match=r"holds result\.json, which bitkit has no record"):
        clear_written(out, "w", what="a run", outputs=["result.json"])
    assert tree(out) == sorted([*before, "result.json"])
    assert clear_written(out, "w", what="a run", outputs=["other.json"]) == ["a.txt"]
    assert digests(out, list(mine)) == mine and (out / "result.json").read_text() == "user's result"


def test_links_records_of_other_writers_and_bad_records_are_never_trusted(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    record_written(out, "w", ["link", "dir/x.txt"])
    os.symlink(elsewhere / "precious.txt", out / "link")  # a link at a recorded name
    os.symlink(elsewhere, out / "dir")  # a linked folder at a recorded folder
    record_written(out, "other", ["theirs.txt"])
    (out / "theirs.txt").write_text("other writer's")
    assert foreign_files(out, "w") == ["dir", "link", "theirs.txt"]
    assert clear_written(out, "w", what="x", outputs=["y"]) == []
    assert (elsewhere / "precious.txt").read_text() == "keep"
    assert json.loads((out / WRITTEN).read_text())["writers"].keys() == {"other"}
    # a hand-edited record listing paths outside the folder vouches for nothing
    (out / WRITTEN).write_text(json.dumps({"format": "bitkit-written-v1", "writers": {
        "w": {"files": ["../elsewhere/precious.txt"], "dirs": []}}}))
    assert foreign_files(out, "w") == [WRITTEN, "dir", "link", "theirs.txt"]
    with pytest.raises(ForeignFilesError, match=WRITTEN):
        clear_written(out, "w", what="x", outputs=["y"])
    with pytest.raises(ForeignFilesError, match="not a record bitkit can read"):
        record_written(out, "w", ["y"])
    assert (elsewhere / "precious.txt").read_text() == "keep"


# ---------------------------------------------------------------------------- ooc.build


def ooc_inputs():
    g = np.random.default_rng(0)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    fg = ooc.Foreground.create("f", g.integers(0, 255, (8, 8, 3), dtype=np.uint8), mask, 0,
                               "cat")
    bgs = [ooc.Background.create(f"b{i}", g.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                                 "room") for i in range(3)]
    return [fg], bgs


def test_ooc_build_refuses_a_folder_with_a_users_files_even_with_overwrite(tmp_path):
    out = tmp_path / "ooc"
    mine = user_files(out)
    for overwrite in (False, True):
        with pytest.raises(ForeignFilesError) as e:
            ooc.build(*ooc_inputs(), out, hf=False, overwrite=overwrite, progress=False)
        msg = str(e.value)
        assert str(out) in msg and "mine/data.csv, notes.txt" in msg
        assert "does not write an OOC dataset next to anything else" in msg
        assert "Choose another folder, or move or remove those files yourself." in msg
        assert tree(out) == ["mine", "mine/data.csv", "notes.txt"]
        assert digests(out, list(mine)) == mine


def test_ooc_overwrite_replaces_only_its_own_dataset(tmp_path):
    out = tmp_path / "ooc"
    fgs, bgs = ooc_inputs()
    ooc.build(fgs, bgs, out, hf=True, progress=False)
    written = json.loads((out / WRITTEN).read_text())["writers"]["bitkit.ooc.build"]
    assert "hf/state.json" in written["files"] and "images/00002.png" in written["files"]
    assert set(written["dirs"]) == {"hf", "images"}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ooc.build(fgs, bgs, out, progress=False)
    ooc.build(fgs, bgs[:1], out, hf=False, overwrite=True, progress=False)  # smaller, no hf/
    assert tree(out) == [WRITTEN, "images", "images/00000.png", "metadata.jsonl"]
    # a user's file dropped into the dataset afterwards is theirs: the next rebuild refuses
    (out / "images" / "my-photo.png").write_bytes(b"user png")
    with pytest.raises(ForeignFilesError, match="images/my-photo.png"):
        ooc.build(fgs, bgs, out, hf=False, overwrite=True, progress=False)
    assert (out / "images" / "my-photo.png").read_bytes() == b"user png"
    assert (out / "images" / "00000.png").exists()


def test_a_killed_ooc_build_is_still_covered_by_its_record(tmp_path, monkeypatch):
    out = tmp_path / "ooc"
    fgs, bgs = ooc_inputs()
    compose, calls = ooc.compose, []

    def dies_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return compose(*args, **kwargs)

    monkeypatch.setattr(ooc, "compose", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        ooc.build(fgs, bgs, out, hf=False, progress=False)
    assert tree(out) == [WRITTEN, "images", "images/00000.png"]
    monkeypatch.setattr(ooc, "compose", compose)
    ooc.build(fgs, bgs, out, hf=False, overwrite=True, progress=False)
    assert len(ooc.read_records(out)) == 3


def test_ooc_overwrite_recognises_a_dataset_built_before_records(tmp_path):
    out = tmp_path / "ooc"
    fgs, bgs = ooc_inputs()
    ooc.build(fgs, bgs, out, hf=True, progress=False)
    (out / WRITTEN).unlink()  # as an older bitkit left it
    ooc.build(fgs, bgs[:2], out, hf=False, overwrite=True, progress=False)
    assert tree(out) == [WRITTEN, "images", "images/00000.png", "images/00001.png",
                         "metadata.jsonl"]
    # a user's imagefolder with its own metadata.jsonl is not mistaken for one of ours
    user = tmp_path / "user-imagefolder"
    (user / "images").mkdir(parents=True)
    (user / "images" / "00000.png").write_bytes(b"their image")
    (user / "metadata.jsonl").write_text('{"file_name": "images/00000.png", "label": 1}\n')
    with pytest.raises(ForeignFilesError, match="images/00000.png, metadata.jsonl"):
        ooc.build(fgs, bgs, user, hf=False, overwrite=True, progress=False)
    assert (user / "images" / "00000.png").read_bytes() == b"their image"


def test_ooc_builder_panel_passes_the_refusal_on(tmp_path):
    from widgets.ooc_builder import OOCBuilder

    out = tmp_path / "ooc"
    mine = user_files(out)
    builder = OOCBuilder.from_world(2, image_size=32, out_dir=out)
    builder.fg_pick.value = builder.fg_pick.value[:1]
    builder.bg_pick.value = builder.bg_pick.value[:1]
    builder.overwrite.value = True
    builder.build_button.click()
    assert "notes.txt" in builder.error and "tick 'overwrite'" not in builder.error
    assert "move or remove those files yourself" in builder.error
    assert builder.built == [] and digests(out, list(mine)) == mine
    assert tree(out) == ["mine", "mine/data.csv", "notes.txt"]


# ------------------------------------------------------------------ lesson torchrun path


class FakeJob:
    """What ``runfile.launch`` starts, without torchrun: the trainer's files, from start.pt."""

    def __init__(self, config, nproc_per_node):
        spec = runfile.load_run_config(config)
        self.out = Path(spec["out_dir"])
        self.before = sorted(p.name for p in self.out.iterdir())
        state = torch.load(spec["weights"], weights_only=True)
        checkpoint.save(self.out / "checkpoint.pt", {"model": state, "step": 2})
        (self.out / "metrics.jsonl").write_text('{"kind": "end", "step": 2}\n')
        (self.out / "launch.log").write_text("fake torchrun\n")

    def follow(self, observers):
        return 0


@pytest.fixture()
def fake_torchrun(monkeypatch):
    jobs = []

    def launch(config, nproc_per_node=2, **kwargs):
        jobs.append(FakeJob(config, nproc_per_node))
        return jobs[-1]

    monkeypatch.setattr(runfile, "launch", launch)
    return jobs


def torchrun_lesson(out, **kw):
    return lesson.transfer("world-objects", "R14x0.25", processes=2, out_dir=out, steps=5,
                           test_size=4, **kw)


def test_torchrun_lesson_removes_only_its_own_files(tmp_path, fake_torchrun, one_thread):
    out = tmp_path / "runs" / "transfer"
    mine = user_files(out)
    run = torchrun_lesson(out)
    assert run.result.reason == "torchrun x 2" and len(run.report) == 4
    ours = ["checkpoint.pt", "launch.log", "metrics.jsonl", "run.yaml", "start.pt"]
    assert tree(out) == sorted([WRITTEN, *ours, "mine", "mine/data.csv", "notes.txt"])
    assert digests(out, list(mine)) == mine
    (out / "checkpoint.pt").write_bytes(b"stale")  # the earlier run's files go, a rerun is fresh
    torchrun_lesson(out)
    assert fake_torchrun[-1].before == sorted([WRITTEN, "mine", "notes.txt", "run.yaml",
                                               "start.pt"])
    assert checkpoint.load(out / "checkpoint.pt")["step"] == 2
    assert digests(out, list(mine)) == mine


def test_torchrun_lesson_refuses_an_unrecorded_file_of_its_names(tmp_path, fake_torchrun):
    out = tmp_path / "transfer"
    mine = user_files(out)
    (out / "checkpoint.pt").write_bytes(b"a model I trained for a week")
    with pytest.raises(ForeignFilesError) as e:
        torchrun_lesson(out)
    msg = str(e.value)
    assert str(out) in msg and "holds checkpoint.pt" in msg and "a torchrun lesson run" in msg
    assert "Choose another folder, or move or remove those files yourself." in msg
    assert fake_torchrun == [] and tree(out) == ["checkpoint.pt", "mine", "mine/data.csv",
                                                 "notes.txt"]
    assert (out / "checkpoint.pt").read_bytes() == b"a model I trained for a week"
    assert digests(out, list(mine)) == mine


def test_torchrun_lesson_recognises_its_folder_from_before_records(tmp_path, fake_torchrun):
    out = tmp_path / "transfer"
    mine = user_files(out)
    torchrun_lesson(out)
    (out / WRITTEN).unlink()  # as an older bitkit left it: run.yaml names this folder
    torchrun_lesson(out)
    assert "checkpoint.pt" not in fake_torchrun[-1].before
    assert digests(out, list(mine)) == mine


def test_a_one_process_lesson_run_then_a_torchrun_one_into_the_same_folder(
        tmp_path, fake_torchrun, one_thread):
    """Lesson 03's exercise: transfer with 1 process, then 2, into one folder. The first run's
    checkpoint and metrics are recorded as bitkit's, so the second replaces them; a user's
    file there stays."""
    out = tmp_path / "transfer"
    mine = user_files(out)
    lesson.transfer("world-objects", "R14x0.25", processes=1, out_dir=out, steps=5,
                    train_size=16, test_size=4, batch_size=8)
    assert {"checkpoint.pt", "metrics.jsonl"} <= set(tree(out))
    torchrun_lesson(out, batch_size=8)
    assert "checkpoint.pt" not in fake_torchrun[-1].before  # removed as ours, then rewritten
    assert digests(out, list(mine)) == mine


# ------------------------------------------------------------------ bitkit run --out


def test_run_notebook_keeps_a_users_files_and_refuses_their_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "check_kernel", lambda kernel: None)
    executed = []

    def fake_papermill(nb, out_nb, parameters, cwd, **kw):  # the kernel's one output
        executed.append(sorted(os.listdir(cwd)))
        Path(out_nb).write_text(Path(nb).read_text())
        Path(cwd, "metrics.json").write_text(json.dumps({"x": parameters["x"]}))

    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake_papermill)
    nb = tmp_path / "tiny.ipynb"
    params = new_code_cell("x = 2")
    params.metadata["tags"] = ["parameters"]
    nbformat.write(new_notebook(cells=[params], metadata={"kernelspec": {
        "name": "bitkit", "display_name": "bitkit", "language": "python"}}), str(nb))
    out = tmp_path / "out"
    mine = user_files(out)
    assert runs.run_notebook(nb, {"x": 3}, out, html=False).metrics == {"x": 3}
    assert runs.run_notebook(nb, {"x": 4}, out, html=False).metrics == {"x": 4}
    assert "metrics.json" not in executed[-1]  # the stale one was removed before the run
    assert digests(out, list(mine)) == mine
    # a metrics.json no run wrote (the user's) is refused, not deleted
    other = tmp_path / "other"
    theirs = user_files(other)
    (other / "metrics.json").write_text('{"my": "numbers"}')
    with pytest.raises(ForeignFilesError, match=r"holds metrics\.json.* a notebook run"):
        runs.run_notebook(nb, {"x": 5}, other, html=False)
    assert (other / "metrics.json").read_text() == '{"my": "numbers"}'
    assert digests(other, list(theirs)) == theirs and len(executed) == 2
    # --out naming the notebook's own folder: the source notebook is never overwritten
    source = nb.read_bytes()
    with pytest.raises(ForeignFilesError, match=r"tiny\.ipynb"):
        runs.run_notebook(nb, {"x": 5}, tmp_path, html=False)
    assert nb.read_bytes() == source
    # a run folder from before records is known by its parameters.yaml header
    (out / WRITTEN).unlink()
    assert runs.run_notebook(nb, {"x": 6}, out, html=False).metrics == {"x": 6}
    assert digests(out, list(mine)) == mine


# ------------------------------------------------------------------ bitkit sweep --out


def test_a_sweep_folder_keeps_a_users_files_and_refuses_their_namesakes(tmp_path, capsys):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from bitkit import cli

    nb = new_notebook(metadata={"kernelspec": {"name": "bitkit", "display_name": "bitkit",
                                               "language": "python"}})
    params = new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params]
    nbformat.write(nb, str(tmp_path / "nb.ipynb"))
    out = tmp_path / "sweep"
    mine = user_files(out)
    argv = ["sweep", str(tmp_path / "nb.ipynb"), "-g", "x", "1,2", "--sbatch", "--out", str(out)]
    assert cli.main(argv) == 0 and cli.main(argv) == 0  # a rerun replaces its own files
    assert (out / "sweep.sbatch").is_file() and (out / "run-1" / "params.yaml").is_file()
    assert digests(out, list(mine)) == mine
    other = tmp_path / "other"
    user_files(other)
    (other / "sweep.sbatch").write_text("#!/bin/bash\n# my own job script\n")
    capsys.readouterr()
    assert cli.main([*argv[:-1], str(other)]) == 2
    err = capsys.readouterr().err
    assert "sweep.sbatch" in err and "Choose another folder" in err and "Traceback" not in err
    assert (other / "sweep.sbatch").read_text() == "#!/bin/bash\n# my own job script\n"
    assert not (other / "run-0").exists()
