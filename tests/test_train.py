"""The training loop: numbers it must produce, events it must emit, mistakes it must name."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import Images, write_run  # test_checkpoint imports write_run from here

from bitkit import cli, runfile, train
from bitkit.checkpoint import CheckpointMismatch, load
from bitkit.evaluate import predict
from bitkit.events import read_jsonl
from bitkit.hyperrule import Schedule, hyperrule
from bitkit.models import create
from bitkit.train import TrainConfig, TrainingDiverged, fit, mixup_lambda

pytestmark = pytest.mark.usefixtures("one_thread")


def config(steps=4, **kw):
    kw.setdefault("schedule", Schedule(0.1, 1, (), steps))
    return TrainConfig(batch_size=8, progress=False, **kw)


def model(seed=0, classes=3, **kw):
    torch.manual_seed(seed)
    return create("R14x0.25", num_classes=classes, **kw)


def weights(m):
    return torch.cat([p.detach().flatten() for p in m.state_dict().values()])


def test_same_seed_same_weights_other_seed_other_weights():
    # MixUp and dropout on: both random, both must be reproduced from the seed.
    cfg = config(mixup_alpha=0.2, dropout=0.3)
    a, b, c = model(), model(), model()
    fit(a, Images(), cfg)
    fit(b, Images(), cfg)
    fit(c, Images(), config(mixup_alpha=0.2, dropout=0.3, seed=1))
    assert torch.equal(weights(a), weights(b))
    assert not torch.allclose(weights(a), weights(c))
    assert not torch.allclose(weights(a), weights(model()))  # it trained


def test_loader_workers_see_the_same_batches():
    main, workers = model(), model()
    fit(main, Images(), config(steps=3, num_workers=0))
    fit(workers, Images(), config(steps=3, num_workers=2))
    assert torch.equal(weights(main), weights(workers))


def test_channels_last_is_a_layout_not_a_different_model():
    plain, cl = model(), model()
    fit(plain, Images(), config(steps=3))
    fit(cl, Images(), config(steps=3, channels_last=True))
    assert cl.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(weights(cl), weights(plain), rtol=1e-4, atol=1e-5)


def test_batch_split_gives_the_full_batch_update_with_groupnorm_only():
    """GroupNorm has no batch statistics, so 4 micro-batches of 2 = one batch of 8 (paper 4.3).

    The BatchNorm ablation normalises each micro-batch with its own statistics: not the same.
    """
    full, split = model(), model()
    fit(full, Images(), config())
    fit(split, Images(), config(batch_split=4))
    torch.testing.assert_close(weights(split), weights(full), rtol=1e-4, atol=1e-5)

    bn_full, bn_split = model(norm="batch"), model(norm="batch")
    fit(bn_full, Images(), config())
    fit(bn_split, Images(), config(batch_split=4))
    assert not torch.allclose(weights(bn_split), weights(bn_full), rtol=1e-3, atol=1e-4)


def test_one_mixup_lambda_per_optimizer_step(monkeypatch):
    calls = []

    def spy(alpha, seed, step):
        calls.append(step)
        return mixup_lambda(alpha, seed, step)

    monkeypatch.setattr(train, "mixup_lambda", spy)
    fit(model(), Images(), config(steps=3, batch_split=4, mixup_alpha=0.1))
    assert calls == [0, 1, 2]
    lams = [mixup_lambda(0.1, 0, s) for s in range(50)]
    assert all(0 < v < 1 for v in lams) and len(set(lams)) == 50
    assert lams == [mixup_lambda(0.1, 0, s) for s in range(50)]  # a function of (seed, step)
    # Beta(0.1, 0.1) puts its mass near 0 and 1: mostly one image dominates the mix
    assert sum(min(v, 1 - v) < 0.1 for v in lams) > 30


def test_events_lr_per_step_and_metrics_file(tmp_path):
    events = []
    cfg = config(steps=6, schedule=Schedule(0.1, 2, (4,), 6), eval_every=3, checkpoint_every=3)
    result = fit(model(), Images(), cfg, eval_data=Images(24, seed=1), out_dir=tmp_path,
                 observers=[events.append])
    kinds = [(e.kind, e.step) for e in events]
    assert kinds == [("start", 0), ("step", 1), ("step", 2), ("step", 3), ("eval", 3),
                     ("checkpoint", 3), ("step", 4), ("step", 5), ("step", 6), ("eval", 6),
                     ("checkpoint", 6), ("end", 6)]
    lrs = [e.metrics["lr"] for e in events if e.kind == "step"]
    assert lrs == [cfg.schedule.lr(s) for s in range(6)] == [0.0, 0.05, 0.1, 0.1, 0.1, 0.01]
    first = next(e for e in events if e.kind == "step")
    assert first.metrics["loss"] == pytest.approx(math.log(3), rel=1e-5)  # zero head: uniform
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in records] == kinds
    assert result.reason == "done" and result.step == 6
    assert result.eval == records[-3]["metrics"] and set(result.eval) == {"loss", "top1"}
    assert load(tmp_path / "checkpoint.pt")["step"] == 6


def test_eval_metrics_match_a_direct_computation():
    m, data = model(classes=8), Images(40, classes=8, seed=2)
    fit(m, Images(classes=8), config(steps=5))
    got = train.evaluate(m, data, config(), "softmax", torch.device("cpu"))
    m.eval()
    with torch.no_grad():
        logits = m(data.x)
    top5 = logits.topk(5, dim=1).indices
    # fractions, like Report.top1 (percent only in display strings)
    assert got["top1"] == pytest.approx((logits.argmax(1) == data.y).float().mean().item())
    assert got["top5"] == pytest.approx((top5 == data.y[:, None]).any(1).float().mean().item())
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, data.y).item(),
                                        rel=1e-5)


def test_fit_eval_and_predict_report_agree_and_both_take_uint8():
    """One scoring for both: fit's eval metrics equal predict's Report (fractions, top-5 only
    with more than 5 classes), on float and on raw uint8 images alike."""
    for classes in (3, 8):
        m, data = model(classes=classes), Images(40, classes=classes, seed=2)
        fit(m, Images(classes=classes), config(steps=2))
        got = train.evaluate(m, data, config(), "softmax", torch.device("cpu"))
        report = predict(m, data, progress=False)
        assert got["top1"] == pytest.approx(report.top1)
        assert got["loss"] == pytest.approx(float(report.loss.mean()), rel=1e-5)
        summary = report.summary()
        if classes > 5:
            assert got["top5"] == pytest.approx(report.top5) == pytest.approx(summary["top5"])
        else:  # top-5 of 3 classes is always 1: neither reports it
            assert "top5" not in got and "top5" not in summary
        raw = Images(40, classes=classes, seed=2)
        raw.x = ((raw.x + 1) * 127.5).round().to(torch.uint8)
        on_uint8 = train.evaluate(m, raw, config(), "softmax", torch.device("cpu"))
        assert on_uint8["top1"] == pytest.approx(predict(m, raw, progress=False).top1)


def test_eval_labels_outside_the_head_are_named_not_an_index_error():
    wrong = Images(16, seed=1)
    wrong.y = torch.arange(16) % 5  # 5 classes, the model has 3
    with pytest.raises(ValueError, match=r"eval_data: labels span 0\.\.4 but the model has 3 "
                                         r"outputs.*num_classes"):
        fit(model(), Images(), config(steps=2), eval_data=wrong)


def test_eval_batch_is_the_per_process_micro_batch(monkeypatch):
    from bitkit.distributed import DistInfo

    sizes = []
    real = train._loader
    monkeypatch.setattr(train, "_loader", lambda *a, **kw: sizes.append(kw["batch_size"]) or
                        real(*a, **kw))
    m, data, cpu = model(), Images(24, seed=1), torch.device("cpu")
    cfg = TrainConfig(Schedule(0.1, 1, (), 2), batch_size=16, batch_split=2, progress=False)
    train.evaluate(m, data, cfg, "softmax", cpu, DistInfo(0, 4))  # 16 / (2 x 4 processes)
    train.evaluate(m, data, cfg, "softmax", cpu, DistInfo(0, 1))
    train.evaluate(m, data, cfg, "softmax", cpu, DistInfo(0, 32))  # never below 1
    cfg.eval_batch_size = 5
    train.evaluate(m, data, cfg, "softmax", cpu, DistInfo(0, 4))
    assert sizes == [2, 8, 1, 5]


def test_multi_hot_targets_train_with_sigmoid_cross_entropy():
    events = []
    m, test = model(classes=6), Images(16, classes=6, multi_hot=True, seed=1)
    fit(m, Images(classes=6, multi_hot=True), config(steps=6, schedule=Schedule(0.01, 1, (), 6)),
        observers=[events.append], eval_data=test)
    losses = [e.metrics["loss"] for e in events if e.kind == "step"]
    # zero head: every logit is 0, BCE per class is log 2, summed over the 6 classes
    assert losses[0] == pytest.approx(6 * math.log(2), rel=1e-5)
    assert losses[-1] < losses[0]
    m.eval()
    with torch.no_grad():
        logits = m(test.x)
    targets = torch.stack([test[i][1] for i in range(len(test))])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    final = next(e for e in events if e.kind == "eval").metrics
    assert final["loss"] == pytest.approx(bce.item() / len(test), rel=1e-5)
    top1_hit = targets.gather(1, logits.argmax(1, keepdim=True)).squeeze(1) > 0
    assert final["top1"] == pytest.approx(top1_hit.float().mean().item())


def test_weight_decay_and_decay_to_init_pull_the_weights():
    start = weights(model())
    plain, wd, to_init = model(), model(), model()
    fit(plain, Images(), config(steps=5))
    fit(wd, Images(), config(steps=5, weight_decay=0.5))
    fit(to_init, Images(), config(steps=5, decay_to_init=2.0))
    assert wd.stages[0].units[0].conv1.weight.norm() < plain.stages[0].units[0].conv1.weight.norm()
    assert (weights(to_init) - start).norm() < (weights(plain) - start).norm()


def test_decay_to_init_with_a_frozen_backbone_trains_the_head_only():
    m = model()
    for p in m.parameters():
        p.requires_grad_(False)
    m.head.weight.requires_grad_(True)
    m.head.bias.requires_grad_(True)
    frozen = m.stem.conv.weight.detach().clone()
    fit(m, Images(), config(steps=3, decay_to_init=0.5))
    assert torch.equal(m.stem.conv.weight, frozen)
    assert m.head.weight.abs().sum() > 0  # the zero-initialised head trained


def test_dropout_is_set_on_the_penultimate_layer():
    m = model()
    fit(m, Images(), config(steps=2, dropout=0.4))
    assert m.dropout.p == 0.4
    with pytest.raises(ValueError, match="no `dropout`"):
        fit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 3)), Images(),
            config(steps=2, dropout=0.4))


def test_observer_stop_request_checkpoints_and_returns(tmp_path):
    def stop_at_3(event):
        if event.kind == "step" and event.step == 3:
            event.request_stop("enough")

    result = fit(model(), Images(), config(steps=10), out_dir=tmp_path, observers=[stop_at_3])
    assert (result.step, result.reason) == (3, "stopped: enough")
    assert load(tmp_path / "checkpoint.pt")["step"] == 3
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1]["reason"] == "stopped: enough"


def test_a_kernel_interrupt_still_ends_the_run_for_observers(tmp_path):
    events = []

    def interrupt_at_2(event):
        events.append(event)
        if event.kind == "step" and event.step == 2:
            raise KeyboardInterrupt  # what Jupyter's "interrupt kernel" raises

    bar = train.ProgressBar()
    with pytest.raises(KeyboardInterrupt):
        fit(model(), Images(), config(steps=10), out_dir=tmp_path,
            observers=[bar, interrupt_at_2])
    assert (events[-1].kind, events[-1].step, events[-1].reason) == ("end", 2, "interrupted")
    assert bar._bar is None  # the progress bar was closed
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1]["reason"] == "interrupted"


class Poisoned(Images):
    """Gives NaN images once ``after`` items have been read."""

    def __init__(self, after):
        super().__init__()
        self.after, self.reads = after, 0

    def __getitem__(self, i):
        self.reads += 1
        x, y = super().__getitem__(i)
        return (x * float("nan") if self.reads > self.after else x), y


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    data = Poisoned(after=1 + 8 * 3)  # item 0 is read once up front; NaN from step 4 on
    with pytest.raises(TrainingDiverged, match=r"nan at step 4 .*last good checkpoint is kept"):
        fit(model(), data, config(steps=8, checkpoint_every=2), out_dir=tmp_path)
    state = load(tmp_path / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1]["reason"].startswith("diverged")


def test_resume_refuses_another_run_and_says_what_differs(tmp_path):
    fit(model(), Images(), config(steps=2), out_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match="batch_size: checkpoint 8, this run 16"):
        fit(model(), Images(), TrainConfig(Schedule(0.1, 1, (), 2), batch_size=16,
                                           progress=False), out_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match="model parameters differ.*only in this model"):
        torch.manual_seed(0)
        fit(create("R26x0.25", num_classes=3), Images(), config(steps=2), out_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match="dataset_size: checkpoint 64, this run 32"):
        fit(model(), Images(32), config(steps=2), out_dir=tmp_path)
    # resume=False starts over in the same directory
    assert fit(model(), Images(32), config(steps=2, resume=False), out_dir=tmp_path).step == 2


def test_user_mistakes_get_clear_messages():
    with pytest.raises(ValueError, match=r"\(image tensor 3xHxW, target\)"):
        fit(model(), [(torch.zeros(16, 16), 0)], config())
    five_classes = Images()
    five_classes.y = torch.arange(64) % 5
    with pytest.raises(ValueError, match=r"range over \d\.\.4 but the model has 3 outputs"):
        fit(model(), five_classes, config())
    with pytest.raises(ValueError, match="multiple of batch_split"):
        TrainConfig(Schedule(0.1, 1, (), 2), batch_size=8, batch_split=3)
    with pytest.raises(ValueError, match="unknown TrainConfig field.*batchsize"):
        TrainConfig.from_recipe(hyperrule(train_size=10, image_size=32), batchsize=8)
    with pytest.raises(ValueError, match="divisible by world_size x batch_split"):
        fit(model(), Images(), _bad_split_config())


def _bad_split_config():
    cfg = config(steps=2)
    cfg.batch_split = 3  # set after validation, as a notebook might; the sampler still refuses
    return cfg


def test_from_recipe_carries_the_rule():
    r = hyperrule(SimpleNamespace(train_size=50_000, image_size=(32, 32)), batch_split=4)
    cfg = TrainConfig.from_recipe(r, eval_every=100)
    assert (cfg.schedule, cfg.batch_size, cfg.batch_split, cfg.mixup_alpha) == (
        r.schedule, 512, 4, 0.1)
    assert cfg.weight_decay == 0.0 and cfg.dropout is None and cfg.eval_every == 100
    assert TrainConfig(**{**cfg.to_dict()}).schedule == r.schedule  # round trip via plain data


def test_bitkit_train_runs_a_yaml_run_file(tmp_path, capsys):
    run_file = write_run(tmp_path)
    assert cli.main(["train", "--config", str(run_file)]) == 0
    assert "done at step 3" in capsys.readouterr().err
    state = load(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 3 and state["model"]["head.weight"].shape[0] == 3  # classes from file
    run_file.write_text("model: R14x0.25\ntrain_data: x.pt\nout_dir: o\nbatch: 3\n")
    assert cli.main(["train", "--config", str(run_file)]) == 2
    assert "run.yaml:4: field 'batch': unknown name" in capsys.readouterr().err


def test_a_run_file_can_name_a_bitkit_dataset(tmp_path):
    """digits (scikit-learn, 8x8 px) through bitkit.data: raw -> BiT preprocessing -> fit."""
    run_file = tmp_path / "digits.yaml"
    run_file.write_text(json.dumps({
        "model": "R14x0.25", "train_data": "digits:train", "eval_data": "digits:test",
        "out_dir": str(tmp_path / "out"), "resolution": [20, 16],
        "train": {"batch_size": 8, "progress": False, "eval_batch_size": 128,
                  "schedule": {"base_lr": 0.1, "warmup_steps": 1, "decay_steps": [],
                               "total_steps": 2}}}))
    result = runfile.run(run_file)
    assert result.step == 2 and set(result.eval) == {"loss", "top1", "top5"}
    assert math.isfinite(result.eval["loss"]) and result.eval["loss"] != math.log(10)  # trained
    state = load(tmp_path / "out" / "checkpoint.pt")
    assert state["identity"]["dataset_size"] == 1297 and state["model"]["head.bias"].shape == (10,)
    spec = runfile.load_run_config(run_file)
    recipe = runfile.recipe_for(spec, runfile.load_data("digits:train", "train"))
    assert recipe.crop == 128 and recipe.schedule.total_steps == 500  # 8x8 px, 1297 images
    raw = runfile.load_data("digits:test", "test")
    assert runfile.prepare(raw, recipe, [20, 16], train=False)[0][0].shape == (3, 16, 16)
    assert runfile.prepare(raw, recipe, "recipe", train=False)[0][0].shape == (3, 128, 128)


def test_run_file_user_mistakes_are_messages_not_tracebacks(tmp_path, capsys):
    base = json.loads(write_run(tmp_path).read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**base, "train_data": "digitz:train"}))
    assert cli.main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "error: Unknown dataset 'digitz'. Did you mean 'digits'" in err and "\"Unknown" not in err
    bad.write_text(json.dumps({**base, "train_data": "digits:train",
                               "recipe_args": {"batchsize": 8}}))
    assert cli.main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert ("bad.yaml:1: field 'recipe_args.batchsize': unknown name (did you mean "
            "'batch_size'?); known: ") in err and "image_size" in err
    bad.write_text(json.dumps({**base, "recipe": "search", "recipe_args": {"trail": 3}}))
    assert cli.main(["train", "--config", str(bad)]) == 2
    assert "'recipe_args.trail': unknown name (did you mean 'trial'?)" in capsys.readouterr().err


def test_cli_prints_a_key_error_message_without_quotes(monkeypatch, capsys):
    def lookup_fails(_path, observers=()):
        raise KeyError("no result for 7-shot; have [1, 5]")

    monkeypatch.setattr(runfile, "run", lookup_fails)
    assert cli.main(["train", "--config", "x.yaml"]) == 2
    assert capsys.readouterr().err == "bitkit train: error: no result for 7-shot; have [1, 5]\n"
