"""The spine end to end: upstream pre-training (cached, resumable) and HyperRule transfer."""

import pytest
import torch

from bitkit import experiments, hyperrule
from bitkit.events import RunControl

SMALL = dict(model="R14x0.25", size=2048, steps=12, batch_size=64, progress=False)


class Count:
    def __init__(self):
        self.kinds = []

    def __call__(self, event):
        self.kinds.append(event.kind)


def test_pretrain_is_cached_by_its_settings(tmp_path):
    first = Count()
    a = experiments.pretrain(**SMALL, cache_dir=tmp_path, observers=[first])
    assert first.kinds.count("step") == 12 and first.kinds[-1] == "end"
    again = Count()
    b = experiments.pretrain(**SMALL, cache_dir=tmp_path, observers=[again])
    assert again.kinds == []  # loaded from the cache: no training at all
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


def test_shortened_recipe_keeps_the_schedule_shape():
    rule = hyperrule.hyperrule(train_size=1000, image_size=(32, 32))
    short = rule.shortened(50)
    assert rule.schedule.boundaries == (100, 200, 300, 400, 500)
    assert short.schedule.boundaries == (10, 20, 30, 40, 50)
    assert short.schedule.lr(10) == rule.schedule.base_lr
    assert rule.shortened(500) is rule
    with pytest.raises(ValueError, match="at least 5"):
        rule.shortened(3)
