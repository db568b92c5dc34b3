"""Transfer matters on the embedded world: what the world is built to teach (paper 1, 4.1, Figs. 4-5).

A fast configuration of ``bench/world_transfer.py`` (which measures every task and the model
size axis at 3x the upstream budget; its numbers are in ``bench/README.md``): R14x0.25
pre-trained for 1,200 steps of 128 on 100k distinct upstream images ("large") or on 1,000
("small", the same steps: only the amount of distinct data differs), then every arm, and the
same architecture from scratch, fine-tuned with BiT-HyperRule for the same 100 steps on the
same 500 examples. Each arm gets its better lr of two (a from-scratch model needs a larger one
than a pre-trained model; one lr for both would be unfair to one side), chosen on 500 other
training examples, never on the test split (``experiments.sweep_lr``).

The tasks are the three whose margins hold over fine-tuning seeds in this budget: natural
objects, fine-grained shapes and counting (structured). Measured with fine-tuning seeds 0, 1, 2
(top-1 %, 500 test images; the test runs seed 0; world version 4; version 5 replaced 20 of
the 500 world-fine and world-count test images by planted copies drawn from the same
distribution, and the test passed again at seed 0):

    task            large - scratch        large - small
    world-objects   +12.6  +8.6  +9.0      +3.0  +3.6  +1.0
    world-fine      +10.0 +10.6  +8.0      +5.2  +2.0  -1.2
    world-count      +6.8 +13.0 +14.0      +3.0  +8.0 +10.2
    mean                                   +3.7  +4.5  +3.3

An earlier measurement, with the lr chosen on the test split, found world-distance did not
hold at this budget (+4.6, -1.6, -6.4 against scratch), and neither did the model-size axis
(R26x0.25 vs R14x0.25: +0.0 to +4.6 on objects and counting, -6 to -11 on fine-grained): both
need the bench's larger upstream runs.

Why 1,200 steps, the suite's slowest setup: the lessons' shared 600-step models (the same
recipe, 50k and 1k images) would cost nothing extra, but at 600 steps the claims do not hold
(2026-12-02, seeds 0-1: large - scratch +12.8/+3.6 objects, +2.8/+3.4 fine, +1.8/+3.6
counting; large - small -5.6/-4.0 on fine-grained).
"""

import pytest

from bitkit import experiments

pytestmark = pytest.mark.slow

TASKS = ("world-objects", "world-fine", "world-count")
UPSTREAM = dict(steps=1200, batch_size=128, base_lr=0.1, seed=0)
FINETUNE = dict(train_size=500, val_size=500, test_size=500, steps=100)
LRS = (0.03, 0.1)


def measure(cache, seed: int = 0) -> dict[str, dict[str, float]]:
    """{task: {arm: test top-1 %}} for scratch and the two pre-trained arms, each at the lr
    of ``LRS`` that scores best on held-out training examples (``experiments.sweep_lr``)."""
    arms = {
        "scratch": "R14x0.25",
        "small": experiments.pretrain("R14x0.25", size=1000, cache_dir=cache, progress=False,
                                      **UPSTREAM),
        "large": experiments.pretrain("R14x0.25", size=100_000, cache_dir=cache,
                                      progress=False, **UPSTREAM),
    }
    return {task: {arm: 100 * experiments.sweep_lr(task, start, LRS, seed=seed, progress=False,
                                                   **FINETUNE).top1
                   for arm, start in arms.items()}
            for task in TASKS}


@pytest.fixture(scope="module")
def top1(tmp_path_factory):
    return measure(tmp_path_factory.mktemp("upstream"))


def test_pre_training_beats_scratch_at_equal_steps(top1):
    for task, arms in top1.items():  # smallest margin seen over 3 seeds: 6.8 points
        assert arms["large"] > arms["scratch"] + 3, f"{task}: {arms}"


def test_more_upstream_data_helps(top1):
    gains = {task: arms["large"] - arms["small"] for task, arms in top1.items()}
    assert sum(gains.values()) / len(gains) > 1.0, gains  # smallest mean seen: 3.3 points
    assert min(gains.values()) > -2, gains  # and no task clearly worse (smallest seen: -1.2)
