"""BiT-HyperRule, the upstream schedule and the search space against the released numbers.

The reference below is a transcription of the released ``bit_hyperrule.py``: the
tables and lr values must equal it exactly, at every threshold and every boundary.
"""

from types import SimpleNamespace

import pytest

from bitkit import cli
from bitkit.hyperrule import (
    BIT_S_WARMUP_FRACTION,
    Schedule,
    SearchSpace,
    batch_split_for,
    hyperrule,
    upstream,
)


def released_schedule(n):
    if n < 20_000:
        return [100, 200, 300, 400, 500]
    elif n < 500_000:
        return [500, 3000, 6000, 9000, 10_000]
    return [500, 6000, 12_000, 18_000, 20_000]


def released_lr(step, n, base_lr=0.003):
    supports = released_schedule(n)
    if step < supports[0]:
        return base_lr * step / supports[0]
    elif step >= supports[-1]:
        return None
    for s in supports[1:]:
        if s < step:
            base_lr /= 10
    return base_lr


@pytest.mark.parametrize(
    "n, regime, boundaries, mixup",
    [
        (1, "small", (100, 200, 300, 400, 500), 0.0),
        (10_000 - 1, "small", (100, 200, 300, 400, 500), 0.0),
        (20_000 - 1, "small", (100, 200, 300, 400, 500), 0.0),
        (20_000, "medium", (500, 3000, 6000, 9000, 10_000), 0.1),
        (500_000 - 1, "medium", (500, 3000, 6000, 9000, 10_000), 0.1),
        (500_000, "large", (500, 6000, 12_000, 18_000, 20_000), 0.1),
        (14_197_122, "large", (500, 6000, 12_000, 18_000, 20_000), 0.1),
    ],
)
def test_schedule_and_mixup_thresholds(n, regime, boundaries, mixup):
    r = hyperrule(train_size=n, image_size=(32, 32))
    assert r.schedule.boundaries == boundaries == tuple(released_schedule(n))
    assert r.mixup_alpha == mixup
    assert r.schedule.base_lr == 0.003 and r.batch_size == 512 and r.weight_decay == 0.0
    assert r.momentum == 0.9
    assert f"{regime} task" in r.explain()


@pytest.mark.parametrize("n", [10_000 - 1, 20_000, 500_000])
def test_lr_curve_equals_release_at_every_step(n):
    s = hyperrule(train_size=n, image_size=(32, 32)).schedule
    for step in range(s.total_steps):
        assert s.lr(step) == released_lr(step, n), step  # exact, not approximately
    assert released_lr(s.total_steps, n) is None
    with pytest.raises(ValueError, match="outside the schedule"):
        s.lr(s.total_steps)


def test_lr_at_the_named_points_small_task():
    s = hyperrule(train_size=10_000 - 1, image_size=(32, 32)).schedule
    assert s.lr(0) == 0.0  # the first step trains with lr 0, as released
    assert s.lr(50) == pytest.approx(0.0015)
    assert s.lr(100) == 0.003  # warm-up end
    assert s.lr(200) == 0.003  # a decay applies for step > boundary
    assert s.lr(201) == pytest.approx(3e-4)
    assert s.lr(301) == pytest.approx(3e-5)
    assert s.lr(401) == pytest.approx(3e-6)
    assert s.lr(499) == pytest.approx(3e-6)  # the end: 500 steps in all
    assert s.total_steps == 500


def test_lr_at_the_named_points_medium_and_large():
    m = hyperrule(train_size=20_000, image_size=(224, 224)).schedule
    assert (m.lr(0), m.lr(500), m.lr(3000), m.total_steps) == (0.0, 0.003, 0.003, 10_000)
    assert m.lr(3001) == pytest.approx(3e-4) and m.lr(9001) == pytest.approx(3e-6)
    large = hyperrule(train_size=500_000, image_size=(224, 224)).schedule
    assert large.lr(250) == pytest.approx(0.0015) and large.lr(6001) == pytest.approx(3e-4)
    assert large.lr(19_999) == pytest.approx(3e-6) and large.total_steps == 20_000


@pytest.mark.parametrize(
    "hw, resize, crop",
    [((32, 32), 160, 128), ((95, 96), 160, 128), ((96, 96), 512, 480), ((500, 375), 512, 480),
     ((1, 9215), 160, 128), ((1, 9216), 512, 480)],
)
def test_resolution_from_image_area(hw, resize, crop):
    r = hyperrule(train_size=1000, image_size=hw)
    assert (r.resize, r.crop) == (resize, crop)


def test_card_is_duck_typed_and_numbers_override_it():
    card = SimpleNamespace(name="dsprites-orientation", train_size=800, image_size=(64, 64),
                           flip=False, crop=True)
    r = hyperrule(card)
    assert r.schedule.total_steps == 500 and r.crop == 128 and not r.flip and r.random_crop
    assert "no flip" in r.explain() and "dsprites-orientation" in r.source
    # few-shot: the subset size, not the card's, sets the schedule
    assert hyperrule(SimpleNamespace(train_size=50_000, image_size=(32, 32)),
                     train_size=10).mixup_alpha == 0.0


def test_missing_inputs_and_bad_batches_say_what_to_do():
    with pytest.raises(ValueError, match="train_size=N and image_size"):
        hyperrule(train_size=100)
    with pytest.raises(ValueError, match="multiple of batch_split"):
        hyperrule(train_size=100, image_size=32, batch_split=3)
    with pytest.raises(ValueError, match="image_size"):
        hyperrule(train_size=100, image_size=(32, 32, 3, 1))


def test_other_batch_sizes_keep_the_release_unless_rescaling_is_asked():
    plain = hyperrule(train_size=100, image_size=32, batch_size=128)
    assert plain.schedule == hyperrule(train_size=100, image_size=32).schedule
    assert "4x fewer" in plain.explain() and "batch_split" in plain.explain()
    scaled = hyperrule(train_size=100, image_size=32, batch_size=128, rescale_for_batch=True)
    assert scaled.schedule.base_lr == pytest.approx(0.003 / 4)
    assert scaled.schedule.boundaries == (400, 800, 1200, 1600, 2000)
    assert "NOT part of BiT-HyperRule" in scaled.explain()


def test_batch_split_keeps_512():
    r = hyperrule(train_size=100, image_size=32, batch_split=batch_split_for(512, 100))
    assert (r.batch_split, r.micro_batch_size, r.batch_size) == (8, 64, 512)
    assert batch_split_for(512, 512) == 1 and batch_split_for(512, 1) == 512


def test_explanation_is_structured_and_json_ready():
    r = hyperrule(train_size=50_000, image_size=(32, 32))
    names = [d.name for d in r.decisions]
    assert names == ["resolution", "schedule", "mixup", "optimizer", "batch", "augmentation"]
    d = r.to_dict()
    assert d["schedule"]["decay_steps"] == [3000, 6000, 9000] and d["mixup_alpha"] == 0.1
    assert "20,000 <= n = 50,000 < 500,000" in r.decisions[1].rule


def test_cli_prints_the_explanation(capsys):
    assert cli.main(["hyperrule", "--train-size", "50000", "--image-size", "32", "32"]) == 0
    out = capsys.readouterr().out
    assert "medium task: 10,000 steps" in out and "alpha = 0.1" in out and "crop 128x128" in out


def test_upstream_schedules_of_the_paper():
    s = upstream(1_281_167, variant="S")  # ILSVRC-2012, batch 4096
    spe = 1_281_167 / 4096
    assert s.schedule.base_lr == pytest.approx(0.03 * 4096 / 256)
    assert s.schedule.warmup_steps == 5000
    assert s.schedule.decay_steps == tuple(round(e * spe) for e in (30, 60, 80))
    assert s.schedule.total_steps == round(90 * spe)
    assert s.weight_decay == 1e-4 and s.mixup_alpha == 0.0 and s.crop == 224
    assert BIT_S_WARMUP_FRACTION * s.schedule.decay_steps[0] >= 5000
    big = upstream(300_000_000, variant="L")
    spe = 300_000_000 / 4096
    assert big.schedule.decay_steps == tuple(round(e * spe) for e in (10, 23, 30, 37))
    assert big.schedule.total_steps == round(40 * spe) and big.schedule.warmup_steps == 5000


def test_upstream_scales_to_a_small_run():
    r = upstream(50_000, variant="M", batch_size=128, epochs=9)
    spe = 50_000 / 128
    assert r.schedule.decay_steps == (round(3 * spe), round(6 * spe), round(8 * spe))
    assert r.schedule.total_steps == round(9 * spe)
    assert r.schedule.warmup_steps == round(BIT_S_WARMUP_FRACTION * round(3 * spe)) < 5000
    assert r.schedule.base_lr == pytest.approx(0.03 * 128 / 256)
    with pytest.raises(ValueError, match="too few for a warm-up"):
        upstream(100, batch_size=4096, epochs=1)


def test_search_space_is_seeded_nested_and_in_range():
    space = SearchSpace()
    a, b = space.trials(40, seed=3), space.trials(20, seed=3)
    assert a[:20] == b and a != space.trials(40, seed=4)
    for t in a:
        assert 1e-4 <= t.schedule.base_lr <= 1e-1
        assert t.schedule.total_steps in (500, 1000, 2000, 4000, 8000, 16000)
        assert 0.0 <= t.dropout <= 0.7 and 1e-6 <= t.decay_to_init <= 1e-1
        assert t.mixup_alpha in (0.0, 0.05, 0.1, 0.2, 0.4)
        assert t.crop in (64, 128, 192, 256, 320, 384) and t.weight_decay == 0.0
    # log-uniform: about as many trials below 10^-2.5 as above
    below = sum(t.schedule.base_lr < 10 ** -2.5 for t in space.trials(400))
    assert 150 < below < 250


def test_schedule_validation():
    with pytest.raises(ValueError, match="increase strictly"):
        Schedule(0.1, 10, (5,), 20)
    with pytest.raises(ValueError, match="positive"):
        Schedule(0.0, 1, (), 2)
    assert Schedule.from_dict(Schedule(0.1, 1, (3,), 5).to_dict()) == Schedule(0.1, 1, (3,), 5)
