"""The spine end to end: upstream pre-training (cached, resumable) and HyperRule transfer."""

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from bitkit import data, events, experiments, hyperrule
from bitkit.events import RunControl

SMALL = dict(model="R14x0.25", size=2048, steps=12, batch_size=64, progress=False)


class Count:
    def __init__(self):
        self.kinds, self.seen = [], []

    def __call__(self, event):
        self.kinds.append(event.kind)
        self.seen.append((event.kind, event.step, event.metrics.get("loss"), event.time))


def test_pretrain_is_cached_by_its_settings(tmp_path):
    first = Count()
    a = experiments.pretrain(**SMALL, cache_dir=tmp_path, observers=[first])
    assert first.kinds.count("step") == 12 and first.kinds[-1] == "end"
    again = Count()
    b = experiments.pretrain(**SMALL, cache_dir=tmp_path, observers=[again])
    # loaded from the cache, not trained: the observers get the recorded run's own events
    # (same steps, losses and times), so a monitor shows the curves of the run that built it
    assert again.seen == first.seen
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                                 strict=True))
    assert a.num_classes == 728
    other = experiments.pretrain(**{**SMALL, "seed": 1}, cache_dir=tmp_path)
    assert not torch.equal(other.stem.conv.weight, a.stem.conv.weight)
    assert len(list(tmp_path.iterdir())) == 2


def test_a_stopped_pretraining_resumes_instead_of_restarting(tmp_path):
    control = RunControl()

    def stop_at_5(event):
        if event.kind == "step" and event.step == 5:
            control.request_stop("test")

    experiments.pretrain(**SMALL, cache_dir=tmp_path, observers=[stop_at_5], control=control)
    (folder,) = tmp_path.iterdir()
    assert not (folder / experiments.FINAL_WEIGHTS).exists()  # not final: stays resumable
    resumed = Count()
    experiments.pretrain(**SMALL, cache_dir=tmp_path, observers=[resumed])
    assert resumed.kinds.count("step") == 12 - 5
    assert (folder / experiments.FINAL_WEIGHTS).exists()
    # the replay of the finished model tells the whole story: stopped at 5, resumed, done
    replayed = Count()
    experiments.pretrain(**SMALL, cache_dir=tmp_path, observers=[replayed])
    assert [(k, st) for k, st, *_ in replayed.seen if k in ("start", "end")] == [
        ("start", 0), ("end", 5), ("start", 5), ("end", 12)]
    assert [st for k, st, *_ in replayed.seen if k == "step"] == list(range(1, 13))


def test_a_replayed_event_cannot_stop_anything(tmp_path):
    experiments.pretrain(**SMALL, cache_dir=tmp_path)

    def stop_now(event):
        event.request_stop("too late")  # a finished run: nothing to stop, and no error

    recorded = next(tmp_path.iterdir()) / "metrics.jsonl"
    assert [r["kind"] for r in events.read_jsonl(recorded)] == (
        ["start"] + ["step"] * 12 + ["checkpoint", "end"])
    assert events.replay(recorded, [stop_now]) == 15
    assert events.replay(tmp_path / "missing.jsonl", [stop_now]) == 0


def test_finetune_from_pretrained_and_from_scratch(tmp_path):
    up = experiments.pretrain(**SMALL, cache_dir=tmp_path)
    kw = dict(steps=10, train_size=200, test_size=100, progress=False)
    transfer = experiments.finetune("world-objects", up, **kw)
    scratch = experiments.finetune("world-objects", "R14x0.25", **kw)
    for run in (transfer, scratch):
        assert run.model.num_classes == 20 and run.train_size == 200
        assert len(run.report.targets) == 100 and 0 <= run.top1 <= 1
        assert run.result.step == 10
    assert up.num_classes == 728  # the upstream model itself is untouched
    text = transfer.recipe.explain()
    assert "2,000" not in text.splitlines()[0] and "200 training images" in text
    assert "10 steps instead of 500" in text and "resize to 36, crop 32 instead of 160/128" in text


def test_finetune_k_shot_and_bad_parameters(tmp_path):
    run = experiments.finetune("world-objects", "R14x0.25", shots=2, steps=5, test_size=40,
                               progress=False)
    assert run.train_size == 2 * 20
    with pytest.raises(ValueError, match="train_size must be in 1..2000"):
        experiments.finetune("world-objects", train_size=5000, progress=False)
    with pytest.raises(ValueError, match="at least one batch"):
        experiments.pretrain(**{**SMALL, "size": 10}, cache_dir=tmp_path)


def test_finetune_on_given_data_with_a_given_recipe():
    raw = data.load("world-objects", "train")
    train_set = data.SubsetDataset(raw, range(48), tag="first 48")
    val = data.SubsetDataset(raw, range(48, 72))
    test_set = data.SubsetDataset(data.load("world-objects", "test"), range(30))
    recipe = hyperrule.hyperrule(raw.card, train_size=48, batch_size=16).shortened(5) \
        .at_resolution(20, 16, why="a test")
    run = experiments.finetune("world-objects", "R14x0.25", train_set=train_set,
                               test_set=test_set, recipe=recipe, progress=False)
    assert run.recipe is recipe and run.result.step == 5  # used as given: not resized
    assert run.train_size == 48 and run.model.num_classes == 20
    assert len(run.report.targets) == 30 and run.report.class_names == raw.class_names
    assert len(run.evaluate(val, progress=False).targets) == 24
    assert run.evaluate(test_set, progress=False).top1 == run.top1  # evaluate = the test path
    # a given train set without a recipe: the rule from its card and size, the task's test split
    ruled = experiments.finetune("world-objects", train_set=train_set, steps=5, test_size=20,
                                 batch_size=16, progress=False)
    assert ruled.result.step == 5 and len(ruled.report.targets) == 20
    assert "48 training images" in ruled.recipe.explain() and ruled.recipe.crop == 32


def test_finetune_refuses_options_that_contradict():
    raw = data.load("world-objects", "train")
    some = data.SubsetDataset(raw, range(8))
    recipe = hyperrule.hyperrule(raw.card, train_size=8)
    bad = [
        (dict(train_set=some, shots=1), "train_set= is the training data as given, but shots="),
        (dict(train_set=some, train_size=4), "but train_size= choose a subset"),
        (dict(shots=1, train_size=4), "pass one of them"),
        (dict(test_set=some, test_size=4), "test_set= is the test data as given, but test_size="),
        (dict(train_set=some, test_set=some, path="x"), "nothing would be read from it"),
        (dict(recipe=recipe, steps=5), "recipe= is used as given, but steps= build"),
        (dict(recipe=recipe, batch_size=8, base_lr=0.1), "but batch_size=, base_lr= build"),
        (dict(train_set=TensorDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2))),
         "needs a num_classes attribute"),
    ]
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            experiments.finetune("world-objects", progress=False, **options)
    with pytest.raises(ValueError, match="train_set= is 'world-objects' data but task='world-count'"):
        experiments.finetune("world-count", train_set=some, progress=False)
    no_card = TensorDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    no_card.num_classes = 2
    with pytest.raises(ValueError, match="no data card .* pass recipe="):
        experiments.finetune("world-objects", train_set=no_card, progress=False)
    with pytest.raises(TypeError, match="must be a bitkit.hyperrule.Recipe"):
        experiments.finetune("world-objects", recipe={"steps": 5}, progress=False)


def test_shortened_recipe_keeps_the_schedule_shape():
    rule = hyperrule.hyperrule(train_size=1000, image_size=(32, 32))
    short = rule.shortened(50)
    assert rule.schedule.boundaries == (100, 200, 300, 400, 500)
    assert short.schedule.boundaries == (10, 20, 30, 40, 50)
    assert short.schedule.lr(10) == rule.schedule.base_lr
    assert rule.shortened(500) is rule
    with pytest.raises(ValueError, match="at least 5"):
        rule.shortened(3)


def test_sweep_lr_chooses_on_held_out_training_examples_not_on_test():
    sweep = experiments.sweep_lr("world-count", "R14x0.25", (0.001, 0.3), train_size=64,
                                 val_size=100, steps=8, batch_size=32, test_size=50,
                                 progress=False)
    assert set(sweep.val_top1) == set(sweep.test_top1) == {0.001, 0.3}
    assert sweep.lr == max(sweep.val_top1, key=sweep.val_top1.get)
    assert sweep.top1 == sweep.test_top1[sweep.lr] == sweep.best.report.top1
    assert len(sweep.best.report) == 50 and sweep.best.train_size == 64
    assert all(i.startswith("world-count:test:") for i in sweep.best.report.ids)
    with pytest.raises(ValueError, match="at least one lr"):
        experiments.sweep_lr("world-count", "R14x0.25", (), train_size=8, val_size=8)


def test_sweep_lr_writes_a_folder_per_lr_and_shows_observers_one_timeline(tmp_path):
    seen = []
    sweep = experiments.sweep_lr("world-count", "R14x0.25", (0.01, 0.1), train_size=64,
                                 val_size=32, steps=6, batch_size=32, test_size=20,
                                 out_dir=tmp_path, observers=[seen.append], progress=False)
    assert sweep.out_dirs == {0.01: tmp_path / "lr=0.01", 0.1: tmp_path / "lr=0.1"}
    for folder in sweep.out_dirs.values():  # each lr's own fit folder, not one overwritten
        steps = [r["step"] for r in events.read_jsonl(folder / "metrics.jsonl")
                 if r["kind"] == "step"]
        assert steps == list(range(1, 7))
    # the observer sees one run of 2 x 6 steps: one start, steps 1..12 in order, one end
    assert [e.kind for e in seen if e.kind in ("start", "end")] == ["start", "end"]
    assert [e.step for e in seen if e.kind == "step"] == list(range(1, 13))
    assert {e.total_steps for e in seen} == {12}
    lrs = [e.metrics["lr"] for e in seen if e.kind == "step"]
    assert max(lrs[:6]) == pytest.approx(0.01) and max(lrs[6:]) == pytest.approx(0.1)


def test_sweep_lr_skips_an_lr_that_diverges(monkeypatch):
    real = experiments.finetune

    def finetune(task, start, *, base_lr, **kw):
        if base_lr > 1:
            raise experiments.TrainingDiverged("loss nan")
        return real(task, start, base_lr=base_lr, **kw)

    monkeypatch.setattr(experiments, "finetune", finetune)
    sweep = experiments.sweep_lr("world-count", "R14x0.25", (10.0, 0.01), train_size=32,
                                 val_size=16, steps=5, batch_size=16, test_size=10,
                                 progress=False)
    assert sweep.lr == 0.01 and math.isnan(sweep.val_top1[10.0])
    with pytest.raises(experiments.TrainingDiverged, match="every lr"):
        experiments.sweep_lr("world-count", "R14x0.25", (10.0,), train_size=32, val_size=16,
                             steps=5, batch_size=16, test_size=10, progress=False)


def test_a_sweeps_timeline_ends_once_even_when_a_middle_lr_diverges():
    # sweep_lr goes on after a diverged lr: the monitor must not show the sweep as ended there
    from bitkit.events import Event

    seen = []
    for i, reason in enumerate(["done", "diverged: loss nan", "done"]):
        timeline = experiments._Timeline([seen.append], i, 3)
        timeline(Event("start", 0, 10))
        timeline(Event("step", 5, 10))
        timeline(Event("end", 10, 10, reason=reason))
    assert [e.kind for e in seen] == ["start", "step", "step", "step", "end"]
    assert [e.step for e in seen if e.kind == "step"] == [5, 15, 25]
    assert {e.total_steps for e in seen} == {30}
    stopped = []
    experiments._Timeline([stopped.append], 0, 3)(Event("end", 4, 10, reason="interrupted"))
    assert [e.reason for e in stopped] == ["interrupted"]
