"""Upstream pre-training on real data (Inception-style crop, path=) and one resolution rule.

Paper 3.3, "Upstream Pre-Training": Inception-style crop to 224 + random flip. Run files and
bitkit.experiments choose the resolution with the same function (hyperrule.resolution_for),
so a printed recipe always says what trained.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from bitkit import experiments, hyperrule, runfile
from bitkit.data import get_card, load, preprocess
from bitkit.data.sources import to_hf
from bitkit.data.transforms import BiTTransform, InceptionTransform, Preprocessed


def _parquet(folder, classes, splits=("train",), size=16, task="world-objects"):
    """A tiny local copy of a real card's dataset: world images whose label column is a
    ClassLabel of the card's ``classes`` (a copy with another class count is refused)."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    names = datasets.ClassLabel(names=[f"class {i}" for i in range(classes)])
    for split in splits:
        raw = load(task, "train" if split == "train" else "test", size=size)
        hf = to_hf(raw, progress=False).cast_column("label", names)
        hf.to_parquet(str(folder / f"{split}-0.parquet"))
    return folder


# ------------------------------------------------------------------------------------------------
# The upstream transform
# ------------------------------------------------------------------------------------------------


def test_inception_boxes_follow_torchvision_random_resized_crop():
    h, w, n = 120, 160, 4000
    ours = InceptionTransform(224, train=True).boxes([(h, w)] * n, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    theirs = [RandomResizedCrop.get_params(torch.empty(3, h, w), [0.08, 1.0], [3 / 4, 4 / 3])
              for _ in range(n)]
    for boxes in (ours, theirs):
        assert all(0 <= i and i + bh <= h and 0 <= j and j + bw <= w for i, j, bh, bw in boxes)
    area = [bh * bw / (h * w) for _, _, bh, bw in ours]
    aspect = [math.log(bw / bh) for _, _, bh, bw in ours]
    assert 0.07 <= min(area) < 0.1 and 0.95 < max(area) <= 1.0   # 8%..100% of the area
    assert min(aspect) > math.log(0.7) and max(aspect) < math.log(1.43)  # 3/4..4/3 (+rounding)
    tv_area = [bh * bw / (h * w) for _, _, bh, bw in theirs]
    tv_aspect = [math.log(bw / bh) for _, _, bh, bw in theirs]
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    assert abs(mean(area) - mean(tv_area)) < 0.02
    assert abs(mean(aspect) - mean(tv_aspect)) < 0.02
    # a 1 x 100 strip fits no draw: both fall back to the same central crop
    strip = InceptionTransform(224, train=True).boxes([(1, 100)])
    assert strip == [RandomResizedCrop.get_params(torch.empty(3, 1, 100), [0.08, 1.0],
                                                  [3 / 4, 4 / 3])] == [(0, 49, 1, 1)]


def test_inception_transform_output_seeding_flip_and_eval():
    images = [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("L", (64, 64), 0)]
    t = InceptionTransform(24, train=True)
    out = t(images, torch.Generator().manual_seed(3))
    assert out.shape == (2, 3, 24, 24) and out.dtype == torch.float32
    assert torch.allclose(out[0, 0], torch.ones(24, 24)) and torch.all(out[1] == -1)
    x = torch.randint(0, 256, (6, 3, 48, 40), dtype=torch.uint8)
    a = t(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, t(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, t(x, torch.Generator().manual_seed(2)))
    assert a.min() >= -1 and a.max() <= 1
    evaluated = InceptionTransform(24, train=False)(x)
    assert torch.equal(evaluated, BiTTransform(24, 24, train=False)(x))     # test: resize to crop
    fixed = InceptionTransform(24, train=True, flip=False, random_crop=False)
    assert torch.equal(fixed(x, torch.Generator().manual_seed(5)), evaluated)  # card forbids both
    flips = InceptionTransform(24, train=True, random_crop=False)(x, torch.Generator().manual_seed(5))
    flipped = [torch.equal(f, e.flip(-1)) for f, e in zip(flips, evaluated, strict=True)]
    same = [torch.equal(f, e) for f, e in zip(flips, evaluated, strict=True)]
    assert all(p or q for p, q in zip(flipped, same, strict=True)) and any(flipped)


def test_preprocess_with_crop_only_is_the_upstream_transform():
    raw = load("world-orientation", "train", size=8)  # card: no flip
    up = preprocess(raw, train=True, crop=24)
    assert isinstance(up, Preprocessed) and isinstance(up.transform, InceptionTransform)
    assert not up.transform.flip and up[0][0].shape == (3, 24, 24)
    with pytest.raises(ValueError, match="crop= alone for the upstream Inception-style crop"):
        preprocess(raw, train=True, resize=64)


# ------------------------------------------------------------------------------------------------
# Real data through the spine
# ------------------------------------------------------------------------------------------------


def test_run_file_prepares_an_upstream_recipe_with_the_inception_crop(tmp_path):
    raw = load(_parquet(tmp_path / "data", classes=20), "train")  # local folder: no teaching size
    recipe = hyperrule.upstream(len(raw), batch_size=8, epochs=4)
    assert (recipe.resize, recipe.crop) == (None, 224)
    assert "Inception-style" in recipe.explain()
    train = runfile.prepare(raw, recipe, None, train=True)
    assert isinstance(train.transform, InceptionTransform) and train.transform.train
    assert train[0][0].shape == (3, 224, 224)
    test = runfile.prepare(raw, recipe, None, train=False)
    assert test[0][0].shape == (3, 224, 224) and not test.transform.train


def test_pretrain_on_a_real_card_from_a_local_copy(tmp_path, monkeypatch):
    seen = {}
    real_fit = experiments.fit

    def spy(model, train_data, config, **kw):
        seen.update(transform=train_data.transform, shape=tuple(train_data[0][0].shape),
                    steps=config.schedule.total_steps)
        return real_fit(model, train_data, config, **kw)

    monkeypatch.setattr(experiments, "fit", spy)
    data = _parquet(tmp_path / "imagenet", classes=1000, size=16)
    net = experiments.pretrain("R14x0.25", "ilsvrc2012", path=data, steps=6, batch_size=4,
                               size=999, cache_dir=tmp_path / "cache", progress=False)
    assert net.num_classes == 1000                               # the card's classes
    assert isinstance(seen["transform"], InceptionTransform) and seen["shape"] == (3, 224, 224)
    assert seen["steps"] == 6
    (folder,) = (tmp_path / "cache").iterdir()
    settings = json.loads((folder / experiments.SETTINGS_FILE).read_text())
    assert settings["size"] == 16 and settings["path"] == str(data.resolve())  # size= ignored
    assert (folder / experiments.FINAL_WEIGHTS).is_file()
    with pytest.raises(ValueError, match="is generated \\(embedded\\)"):
        experiments.pretrain(upstream="world-upstream", path=data, cache_dir=tmp_path)


def test_finetune_a_local_vtab_task_with_path(tmp_path):
    data = _parquet(tmp_path / "svhn", classes=10, splits=("train", "test"), size=24,
                    task="world-count")
    with pytest.raises(ValueError, match="vtab-svhn has no hub copy: pass path="):
        experiments.finetune("vtab-svhn", progress=False)
    run = experiments.finetune("vtab-svhn", "R14x0.25", path=data, steps=5, batch_size=8,
                               progress=False)
    assert run.result.step == 5 and len(run.report.targets) == 24
    assert (run.recipe.resize, run.recipe.crop) == (160, 128)    # BiT-HyperRule, no teaching size
    assert [d.name for d in run.recipe.decisions].count("resolution") == 1  # HyperRule's own


# ------------------------------------------------------------------------------------------------
# One resolution rule
# ------------------------------------------------------------------------------------------------


def test_resolution_for_is_the_one_rule():
    card = get_card("world-objects")
    rule = hyperrule.hyperrule(card, train_size=200, batch_size=64)
    taught = hyperrule.resolution_for(card, rule)
    assert (taught.resize, taught.crop) == tuple(card.resolution) == (36, 32)
    assert "resize to 36, crop 32 instead of 160/128" in taught.explain()
    assert hyperrule.resolution_for(card, rule, "recipe") is rule
    given = hyperrule.resolution_for(card, rule, [20, 16])
    assert (given.resize, given.crop) == (20, 16) and "given (resolution)" in given.explain()
    assert hyperrule.resolution_for(get_card("cifar10"), rule) is rule  # no teaching resolution
    up = hyperrule.resolution_for(card, hyperrule.upstream(2048, batch_size=64, epochs=1))
    assert "instead of an Inception-style crop to 224" in up.explain()
    with pytest.raises(ValueError, match="resolution must be \\[resize, crop\\]"):
        hyperrule.resolution_for(card, rule, "big")


def test_a_run_file_recipe_says_the_resolution_it_trains_at(tmp_path):
    spec = {"model": "R14x0.25", "train_data": "world-objects:train",
            "eval_data": "world-objects:test", "out_dir": str(tmp_path / "out"),
            "recipe_args": {"batch_size": 64}}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(spec))
    plan = runfile.plan(path)
    assert "resize to 36, crop 32 instead of 160/128" in plan.recipe.explain()
    assert plan.train_data[0][0].shape == (3, 32, 32) == plan.eval_data[0][0].shape
    assert (plan.train_data.transform.resize, plan.train_data.transform.crop) == (
        plan.recipe.resize, plan.recipe.crop)
    # experiments.finetune makes the same choice for the same card and data size
    card = get_card("world-objects")
    same = hyperrule.resolution_for(card, hyperrule.hyperrule(card, train_size=2000,
                                                              batch_size=64))
    assert plan.recipe == same and plan.recipe.explain() == same.explain()
    path.write_text(json.dumps({**spec, "resolution": "recipe"}))
    plan = runfile.plan(path)
    assert plan.recipe.crop == 128 and plan.train_data[0][0].shape == (3, 128, 128)
    assert "instead of" not in plan.recipe.explain()
