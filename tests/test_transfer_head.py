"""Transfer always starts from a zero-initialised head, even when the file's class count fits.

Paper 4.1 re-trains the head from scratch even from ILSVRC-2012 to ILSVRC-2012 few-shot, and
Google's released code zero-initialises the head (weight and bias) whatever it loads. So a
1,000-class file (BiT-S, or a model fine-tuned on a 1,000-class task) loaded into a 1,000-class
model gets a zero head, unless ``keep_head=True`` asks for the file's. Each path that loads
weights is checked: the Python API, a run file, ``experiments.finetune`` and the lessons'
torchrun path. A zero head makes every first logit 0, so the first training loss is exactly
ln(classes): an old head leaking in gives a very different number.
"""

import json
import math

import numpy as np
import pytest
import torch
from conftest import write_run

from bitkit import cli, data, experiments, hyperrule, lesson, runfile, weights
from bitkit.checkpoint import load as load_checkpoint
from bitkit.inputs import InputError
from bitkit.models import create

pytestmark = pytest.mark.usefixtures("one_thread")

HEAD = ("head.weight", "head.bias")


def trained_model(classes=1000, seed=1):
    """Stands for a trained file: every tensor non-zero, the head's weight AND bias included."""
    m = create("R14x0.25", num_classes=classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    for p in (m.head.weight, m.head.bias):
        assert torch.count_nonzero(p) == p.numel()
    return m


def save(model, path):
    if path.suffix == ".npz":
        return weights.save_npz(model, path)
    if path.suffix == ".safetensors":
        return weights.save_safetensors(model, path)
    torch.save(model.state_dict(), path)
    return path


def assert_body_equal(got, want):
    g, w = got.state_dict(), want.state_dict()
    assert g.keys() == w.keys()
    for k in w:
        if k not in HEAD:
            assert torch.equal(g[k], w[k]), k


def assert_zero_head(state):
    for k in HEAD:
        assert torch.count_nonzero(state[k]) == 0, k


def first_step_loss(events):
    return next(e for e in events if e.kind == "step").metrics["loss"]


# ------------------------------------------------------------------ (a) the Python API


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pt"])
def test_a_1000_class_file_into_a_1000_class_task_starts_from_a_zero_head(tmp_path, suffix,
                                                                          caplog):
    src = trained_model()
    path = save(src, tmp_path / f"bit-s{suffix}")
    with caplog.at_level("WARNING", logger="bitkit.weights"):
        model = create("R14x0.25", num_classes=1000, weights=str(path))
    assert_zero_head(model.state_dict())  # weight and bias, though the file's head fits
    assert_body_equal(model, src)
    assert "1000-class head is not used (keep_head=True restores it)" in caplog.text
    assert "new head initialised to zeros (BiT transfer)" in caplog.text

    kept = create("R14x0.25", num_classes=1000, weights=str(path), keep_head=True)
    for k, v in src.state_dict().items():
        assert torch.equal(kept.state_dict()[k], v), k  # the head restored exactly


def test_load_reports_what_happened_to_the_head(tmp_path):
    path = weights.save_npz(trained_model(), tmp_path / "ft.npz")
    target = create("R14x0.25", num_classes=1000, zero_head=False)
    with torch.no_grad():
        target.head.bias.fill_(3.0)  # a head that was not zero before loading
    result = weights.load(target, path)
    assert result.head_reset and result.architecture.num_classes == 1000
    assert result.loaded == len(target.state_dict()) - 2  # the file's head is not read
    assert result.message == ("Loaded 43 tensors from ft.npz; the file's 1000-class head is not "
                              "used (keep_head=True restores it): new head initialised to zeros "
                              "(BiT transfer).")
    assert_zero_head(target.state_dict())
    kept = weights.load(create("R14x0.25", num_classes=1000), path, keep_head=True)
    assert not kept.head_reset and kept.loaded == 45
    assert kept.message == "Loaded 45 tensors from ft.npz (head included: keep_head=True)."


def test_timm_state_dicts_follow_the_same_rule():
    src = trained_model(classes=7)
    sd = weights.to_timm_state_dict(src)
    model = create("R14x0.25", num_classes=7)
    assert weights.load_timm_state_dict(model, sd).head_reset
    assert_zero_head(model.state_dict())
    assert_body_equal(model, src)
    kept = create("R14x0.25", num_classes=7)
    assert not weights.load_timm_state_dict(kept, sd, keep_head=True).head_reset
    assert torch.equal(kept.head.weight, src.head.weight)
    assert torch.equal(kept.head.bias, src.head.bias)


def test_keep_head_that_cannot_be_kept_names_both_counts_and_the_fix(tmp_path):
    path = weights.save_safetensors(trained_model(), tmp_path / "ft.safetensors")
    with pytest.raises(ValueError) as e:
        create("R14x0.25", num_classes=10, weights=str(path), keep_head=True)
    assert str(e.value) == (
        f"{path}: keep_head=True restores the file's head, but the file has 1000 classes and "
        "the model 10. Build the model with num_classes=1000 to restore it, or leave keep_head "
        "off to start from a zero-initialised head (BiT transfer).")
    src = trained_model(classes=10)
    full = weights.save_npz(src, tmp_path / "full.npz")
    with np.load(full) as f:
        np.savez(tmp_path / "nohead.npz", **{k: f[k] for k in f.files if "/head/" not in k})
    with pytest.raises(ValueError, match=r"nohead.npz: keep_head=True restores the file's head, "
                                         r"but the file has no head \(the model has 10 classes\); "
                                         r"leave keep_head off"):
        create("R14x0.25", num_classes=10, weights=str(tmp_path / "nohead.npz"), keep_head=True)
    headless = create("R14x0.25", num_classes=10, weights=str(tmp_path / "nohead.npz"))
    assert_zero_head(headless.state_dict())  # the default still works: a feature extractor
    assert_body_equal(headless, src)
    with pytest.raises(ValueError, match=r"keep_head=True\) restores the head of a weights "
                                         r"file; pass weights=PATH"):
        create("R14x0.25", num_classes=10, keep_head=True)


def test_upstream_model_and_convert_keep_the_head(tmp_path, capsys):
    """Restores, not transfers: lesson.upstream_model returns the released model (lesson 08
    predicts upstream classes with its head) and a conversion copies everything."""
    src = trained_model()
    path = weights.save_npz(src, tmp_path / "BiT-S-R14x0.25.npz")
    up = lesson.upstream_model("R14x0.25", weights=str(path))
    assert up.num_classes == 1000
    for k, v in src.state_dict().items():
        assert torch.equal(up.state_dict()[k], v), k
    assert cli.main(["weights", "convert", str(path), str(tmp_path / "c.safetensors")]) == 0
    assert "1000 classes" in capsys.readouterr().out
    m = create("R14x0.25", num_classes=1000)
    assert not weights.load(m, tmp_path / "c.safetensors", keep_head=True).head_reset
    assert torch.equal(m.head.weight, src.head.weight) and torch.equal(m.head.bias, src.head.bias)


# ------------------------------------------------------------------ (b) run files


def run_file_over(tmp_path, weights_path, **keys):
    """A two-step run over the tiny tensor file of conftest, from ``weights_path``."""
    path = write_run(tmp_path, steps=2)
    spec = json.loads(path.read_text())
    path.write_text(json.dumps({**spec, "weights": str(weights_path), "num_classes": 1000,
                                **keys}))
    return path


@pytest.fixture()
def starting_points(monkeypatch):
    """The state of every model runfile.run hands to fit, before it trains."""
    seen, real_fit = [], runfile.fit

    def fit(model, *args, **kwargs):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(runfile, "fit", fit)
    return seen


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_run_file_transfers_from_a_zero_head(tmp_path, suffix, starting_points):
    src = trained_model()
    run_file = run_file_over(tmp_path, save(src, tmp_path / f"ft{suffix}"))
    events = []
    result = runfile.run(run_file, observers=[events.append])
    assert result.step == 2 and load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2
    (start,) = starting_points
    assert_zero_head(start)
    for k, v in src.state_dict().items():
        if k not in HEAD:
            assert torch.equal(start[k], v), k
    # zero head -> all logits 0 -> a uniform softmax over 1000 classes at the first step
    assert first_step_loss(events) == pytest.approx(math.log(1000), rel=1e-6)


def test_a_run_file_keeps_the_head_only_when_it_says_keep_head(tmp_path, capsys, starting_points):
    src = trained_model()
    run_file = run_file_over(tmp_path, weights.save_npz(src, tmp_path / "ft.npz"), keep_head=True)
    events = []
    runfile.run(run_file, observers=[events.append])
    (start,) = starting_points
    for k, v in src.state_dict().items():
        assert torch.equal(start[k], v), k
    assert abs(first_step_loss(events) - math.log(1000)) > 1  # the trained head predicts

    spec = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({**spec, "num_classes": 3, "out_dir": str(tmp_path / "b")}))
    assert cli.main(["train", "--config", str(run_file)]) == 2
    err = capsys.readouterr().err
    assert "keep_head=True restores the file's head, but the file has 1000 classes and the " \
           "model 3. Build the model with num_classes=1000" in err
    no_weights = {k: v for k, v in spec.items() if k != "weights"}
    run_file.write_text(json.dumps(no_weights))
    with pytest.raises(InputError, match=r"run.yaml:1: field 'keep_head': true restores the "
                                         r"head of the weights file, but the run file names no "
                                         r"weights; add weights: FILE or remove keep_head"):
        runfile.load_run_config(run_file)
    run_file.write_text(json.dumps({**spec, "keep_head": "yes"}))
    with pytest.raises(InputError, match=r"run.yaml:1: field 'keep_head': expected true or false "
                                         r"\(or null / None\), got 'yes'"):
        runfile.load_run_config(run_file)


# ------------------------------------------------------------------ (c) experiments.finetune


def small_world_objects():
    raw = data.load("world-objects", "train")
    train_set = data.SubsetDataset(raw, range(16), tag="first 16")
    test_set = data.SubsetDataset(data.load("world-objects", "test"), range(8))
    recipe = hyperrule.hyperrule(raw.card, train_size=16, batch_size=8).shortened(5) \
        .at_resolution(20, 16, why="a test")
    return raw, train_set, test_set, recipe


def test_finetune_from_a_restored_file_with_the_same_classes_starts_from_a_zero_head(tmp_path):
    raw, train_set, test_set, recipe = small_world_objects()
    src = trained_model(classes=raw.num_classes)
    path = weights.save_safetensors(src, tmp_path / "world-objects.safetensors")
    start = create("R14x0.25", num_classes=raw.num_classes, weights=str(path), keep_head=True)
    events = []
    run = experiments.finetune("world-objects", start, train_set=train_set, test_set=test_set,
                               recipe=recipe, observers=[events.append], progress=False)
    assert first_step_loss(events) == pytest.approx(math.log(raw.num_classes), rel=1e-6)
    assert run.result.step == 5
    assert torch.equal(start.head.bias, src.head.bias)  # the given model itself is untouched


# ------------------------------------------------------------------ (d) the lessons' torchrun path


def test_torchrun_lesson_run_starts_from_a_zero_head_for_the_task(tmp_path, monkeypatch):
    """lesson.transfer(processes=2) writes the start model to start.pt and a run file naming it;
    the run (here in this process instead of torchrun) must begin from a zero head for the task,
    like the one-process path, even when the start model's head has the task's class count."""
    class InProcess:
        def __init__(self, config):
            self.config = config

        def follow(self, observers):
            runfile.run(self.config, observers=observers)
            return 0

    monkeypatch.setattr(runfile, "launch", lambda config, nproc_per_node=2, **kw: InProcess(config))
    start = trained_model(classes=data.get_card("world-objects").num_classes)
    events = []
    run = lesson.transfer("world-objects", start, processes=2, out_dir=tmp_path / "t", steps=5,
                          test_size=4, batch_size=8, observers=[events.append])
    assert run.result.reason == "torchrun x 2" and len(run.report) == 4
    spec = runfile.load_run_config(tmp_path / "t" / "run.yaml")
    assert "keep_head" not in spec and spec["weights"].endswith("start.pt")
    assert first_step_loss(events) == pytest.approx(math.log(start.num_classes), rel=1e-6)
    saved = torch.load(tmp_path / "t" / "start.pt", weights_only=True)
    assert torch.equal(saved["head.weight"], start.head.weight)  # the file holds the old head
