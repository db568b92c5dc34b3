"""BiT-HyperRule, the upstream schedule and the random-search space: every hyper-parameter BiT uses.

Paper section 3.3: BiT fine-tunes every task with one setting chosen by a rule, not a sweep. The
rule reads two facts about the task, the image area and the number of training examples, and sets
the resolution, the schedule length and MixUp. Everything else is fixed: SGD with momentum 0.9,
base learning rate 0.003, batch 512, no weight decay.

This module implements the rule *as released* (google-research/big_transfer, ``bit_hyperrule.py``),
which differs from the paper's prose in one place: the paper says "decay at 30%, 60% and 90%", the
release decays small tasks at steps 200/300/400 of 500. The numbers are the released ``bit_hyperrule.py``'s.

Each function returns a :class:`Recipe`: the numbers ``fit`` needs plus a list of
:class:`Decision` records saying which threshold fired and why, so the CLI and the HyperRule
panel print the same explanation.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

#: Released BiT-HyperRule constants (paper 3.3; the released bit_hyperrule.py).
BASE_LR = 0.003
BATCH_SIZE = 512
MOMENTUM = 0.9
SMALL_TASK = 20_000  # n < 20k: "small" task
LARGE_TASK = 500_000  # n >= 500k: "large" task
LOW_RES_AREA = 96 * 96  # H*W below this: low-resolution images
SCHEDULES = {
    "small": (100, 200, 300, 400, 500),
    "medium": (500, 3000, 6000, 9000, 10_000),
    "large": (500, 6000, 12_000, 18_000, 20_000),
}
MIXUP_ALPHA = 0.1

#: Upstream pre-training (paper 3.3 and 4.2).
UPSTREAM_LR_PER_256 = 0.03
UPSTREAM_WARMUP = 5000
UPSTREAM_WEIGHT_DECAY = 1e-4
UPSTREAM_BATCH = 4096
UPSTREAM_EPOCHS = {"S": (90, (30, 60, 80)), "M": (90, (30, 60, 80)), "L": (40, (10, 23, 30, 37))}
#: Warm-up / steps before the first decay in BiT-S (ILSVRC-2012: 1,281,167 images, batch 4096),
#: used to shrink the warm-up with the run when 5000 steps would not fit.
BIT_S_WARMUP_FRACTION = UPSTREAM_WARMUP / (30 * 1_281_167 / UPSTREAM_BATCH)


# ------------------------------------------------------------------------------------------------
# The learning-rate schedule
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up, then the lr divided by 10 after each decay step, stopping at ``total_steps``.

    This is the shape of every BiT schedule. The release writes it as one list of "supports"
    ``[warmup, decay_1, ..., decay_k, total]``; :attr:`boundaries` gives that list back.
    """

    base_lr: float
    warmup_steps: int
    decay_steps: tuple[int, ...]
    total_steps: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "decay_steps", tuple(int(s) for s in self.decay_steps))
        points = [self.warmup_steps, *self.decay_steps, self.total_steps]
        if self.base_lr <= 0 or not math.isfinite(self.base_lr):
            raise ValueError(f"base_lr must be a positive number, got {self.base_lr}")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError(
                f"need warmup_steps >= 0 and total_steps >= 1, got {self.warmup_steps} and "
                f"{self.total_steps}"
            )
        if any(b <= a for a, b in zip(points[:-1], points[1:], strict=True)):
            raise ValueError(
                f"schedule steps must increase strictly (warm-up < decays < total); got {points}. "
                "A run this short has no room for every decay: train longer or drop decays."
            )

    @property
    def boundaries(self) -> tuple[int, ...]:
        """The release's ``get_schedule`` list: warm-up end, decay steps, end of training."""
        return (self.warmup_steps, *self.decay_steps, self.total_steps)

    def lr(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based), exactly as the release computes it.

        Warm-up: ``base * step / warmup`` (so step 0 trains with lr 0, as released). Afterwards the
        lr is divided by 10 once for every decay step strictly below ``step``. The release returns
        None at ``step >= total_steps`` to end training; here that is a ValueError, and the loop
        simply runs ``range(total_steps)``.
        """
        if not 0 <= step < self.total_steps:
            raise ValueError(
                f"step {step} is outside the schedule: training runs steps 0..{self.total_steps - 1}"
            )
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        lr = self.base_lr
        for boundary in self.decay_steps:
            if boundary < step:
                lr /= 10  # repeated division, like the release, so values match bit for bit
        return lr

    def curve(self) -> np.ndarray:
        """lr for every step, for plots."""
        return np.array([self.lr(s) for s in range(self.total_steps)])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decay_steps"] = list(self.decay_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        return cls(d["base_lr"], int(d["warmup_steps"]), tuple(d["decay_steps"]),
                   int(d["total_steps"]))


# ------------------------------------------------------------------------------------------------
# Recipes and their explanations
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One choice of a rule: what was chosen, which condition fired, and why (with the source)."""

    name: str
    value: str
    rule: str
    why: str


@dataclass(frozen=True)
class Recipe:
    """Everything a training run needs from a rule, and the reasons for each number.

    ``resize``/``crop`` are the train-time preprocessing sizes (test time: resize to ``crop``);
    ``flip``/``random_crop`` say whether those augmentations keep the label (supplementary E).
    ``decay_to_init`` and ``dropout`` are only non-zero in random-search trials (supplementary A).
    """

    source: str
    schedule: Schedule
    batch_size: int
    batch_split: int
    mixup_alpha: float
    weight_decay: float
    resize: int | None
    crop: int
    flip: bool = True
    random_crop: bool = True
    decay_to_init: float = 0.0
    dropout: float = 0.0
    momentum: float = MOMENTUM
    decisions: tuple[Decision, ...] = field(default=(), compare=False)

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.batch_split

    def explain(self) -> str:
        """The decisions as text, one block per hyper-parameter (what the CLI prints)."""
        lines = [f"{self.source}:"]
        width = max((len(d.name) for d in self.decisions), default=0)
        indent = " " * (width + 6)
        for d in self.decisions:
            lines.append(textwrap.fill(d.value, 100, initial_indent=f"  {d.name:<{width}}  ",
                                       subsequent_indent=" " * (width + 4)))
            for text in (f"because {d.rule}.", d.why):
                lines.append(textwrap.fill(text, 100, initial_indent=indent,
                                           subsequent_indent=indent))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data for widgets and run configs."""
        d = {k: v for k, v in asdict(self).items() if k not in ("schedule", "decisions")}
        d["schedule"] = self.schedule.to_dict()
        d["decisions"] = [asdict(x) for x in self.decisions]
        return d

    def shortened(self, total_steps: int) -> Recipe:
        """The same recipe compressed to ``total_steps``: warm-up and decays keep their fractions.

        For teaching runs on a CPU, where BiT's 500 steps of 512 images would take too long. This
        is *not* the HyperRule; the added decision says so, so explanations stay honest.
        """
        s = self.schedule
        if total_steps == s.total_steps:
            return self
        if total_steps < len(s.boundaries):
            raise ValueError(f"total_steps must be at least {len(s.boundaries)} to keep a warm-up "
                             f"and {len(s.decay_steps)} decays; got {total_steps}")
        f = total_steps / s.total_steps
        points = [max(1, round(b * f)) for b in s.boundaries[:-1]]
        for i in range(1, len(points)):  # keep boundaries strictly increasing after rounding
            points[i] = max(points[i], points[i - 1] + 1)
        schedule = Schedule(s.base_lr, points[0], tuple(points[1:]), total_steps)
        note = Decision("length", f"{total_steps:,} steps instead of {s.total_steps:,}",
                        "shortened for a quick run (not BiT's schedule)",
                        "Warm-up and lr decays keep their fractions of the run.")
        return replace(self, schedule=schedule, decisions=(*self.decisions, note))

    def at_resolution(self, resize: int, crop: int, why: str) -> Recipe:
        """The same recipe trained at another resolution (e.g. a card's CPU-sized teaching one),
        with a decision that says so and why."""
        if (resize, crop) == (self.resize, self.crop):
            return self
        before = (f"an Inception-style crop to {self.crop}" if self.resize is None
                  else f"{self.resize}/{self.crop}")
        note = Decision("resolution", f"resize to {resize}, crop {crop} instead of {before}",
                        why, "Not BiT's resolution: the explanation above is what BiT would "
                        "use.")
        return replace(self, resize=resize, crop=crop, decisions=(*self.decisions, note))


def _fmt(n: float) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:g}"


def _image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    hw = tuple(int(v) for v in image_size)
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"image_size must be H or (H, W) in pixels, got {image_size!r}")
    return hw  # type: ignore[return-value]


def _check_batch(batch_size: int, batch_split: int) -> None:
    if batch_size < 1 or batch_split < 1 or batch_size % batch_split:
        raise ValueError(
            f"batch_size {batch_size} must be a positive multiple of batch_split {batch_split}: "
            "each optimizer step averages batch_split equal micro-batches."
        )


def batch_split_for(batch_size: int, max_micro_batch: int) -> int:
    """Smallest ``batch_split`` whose micro-batches (``batch_size / split``) fit ``max_micro_batch``.

    This is the release's advice for small GPUs: keep batch 512 and accumulate gradients over
    micro-batches. With GroupNorm there are no batch statistics, so the result is the same update.
    """
    if max_micro_batch < 1:
        raise ValueError(f"max_micro_batch must be >= 1, got {max_micro_batch}")
    return next(k for k in range(1, batch_size + 1)
                if batch_size % k == 0 and batch_size // k <= max_micro_batch)


def _batch_decisions(batch_size: int, batch_split: int, rescale: bool) -> list[Decision]:
    micro = batch_size // batch_split
    split_text = (f"{batch_split} micro-batches of {micro}, one optimizer step"
                  if batch_split > 1 else "one batch per optimizer step")
    if batch_size == BATCH_SIZE:
        rule = "BiT fine-tunes every task with batch 512"
        why = ("Gradient accumulation over micro-batches (batch_split) keeps 512 on small memory; "
               "exact for GroupNorm, which has no batch statistics (paper 4.3).")
    elif rescale:
        rule = f"batch {batch_size} != 512 and rescaling was asked for"
        why = (f"NOT part of BiT-HyperRule: lr x {batch_size}/512 and steps x 512/{batch_size}, "
               "the linear scaling rule (Goyal et al. 2017, paper ref. [9]), so the run sees as "
               "many examples at the same lr per example. Prefer batch 512 with batch_split.")
    else:
        ratio = BATCH_SIZE / batch_size
        rule = f"batch {batch_size} != 512 and no rescaling (the release's behaviour)"
        why = (f"lr and step counts stay as for 512, so the run sees {ratio:g}x "
               f"{'fewer' if ratio > 1 else 'more'} examples than BiT. To reproduce BiT on small "
               "memory use batch 512 with batch_split instead.")
    return [Decision("batch", f"{batch_size} ({split_text})", rule, why)]


# ------------------------------------------------------------------------------------------------
# BiT-HyperRule (downstream)
# ------------------------------------------------------------------------------------------------


def hyperrule(
    card: Any = None,
    *,
    train_size: int | None = None,
    image_size: int | Sequence[int] | None = None,
    batch_size: int = BATCH_SIZE,
    batch_split: int = 1,
    base_lr: float = BASE_LR,
    rescale_for_batch: bool = False,
) -> Recipe:
    """BiT-HyperRule for a task, from a data card or explicit numbers (paper 3.3).

    ``card`` is anything with ``train_size`` and ``image_size`` (H, W) attributes; ``flip`` and
    ``crop`` (bools) and ``name`` are read when present. Explicit ``train_size``/``image_size``
    override the card, e.g. ``train_size=k * classes`` for a k-shot subset.

    ``rescale_for_batch`` is off, like the release: a batch other than 512 changes nothing else.
    Turned on, it applies the linear scaling rule (clearly labelled as not BiT's).
    """
    name = getattr(card, "name", None)
    n = train_size if train_size is not None else getattr(card, "train_size", None)
    hw_in = image_size if image_size is not None else getattr(card, "image_size", None)
    if n is None or hw_in is None:
        raise ValueError(
            "BiT-HyperRule needs the number of training examples and the image size: pass a data "
            "card, or train_size=N and image_size=(H, W)."
        )
    n = int(n)
    if n < 1:
        raise ValueError(f"train_size must be >= 1, got {n}")
    h, w = _image_hw(hw_in)
    _check_batch(batch_size, batch_split)
    flip, random_crop = bool(getattr(card, "flip", True)), bool(getattr(card, "crop", True))
    decisions: list[Decision] = []

    # Resolution from the image area.
    area = h * w
    if area < LOW_RES_AREA:
        resize, crop = 160, 128
        rule = f"H*W = {h}x{w} = {area:,} < 96*96 = {LOW_RES_AREA:,} (low-resolution images)"
    else:
        resize, crop = 512, 480
        rule = f"H*W = {h}x{w} = {area:,} >= 96*96 = {LOW_RES_AREA:,}"
    decisions.append(Decision(
        "resolution", f"resize to {resize}x{resize}, random crop {crop}x{crop}; test: resize to "
        f"{crop}", rule,
        "Fine-tuning at a higher resolution than the images' own helps; training on crops and "
        "testing on the full resized image fixes the train/test resolution gap in the "
        "fine-tuning step itself (paper 2.2, 3.3; Touvron et al. [55])."))

    # Schedule length from the number of examples.
    if n < SMALL_TASK:
        regime, rule = "small", f"n = {n:,} < 20,000"
    elif n < LARGE_TASK:
        regime, rule = "medium", f"20,000 <= n = {n:,} < 500,000"
    else:
        regime, rule = "large", f"n = {n:,} >= 500,000"
    b = SCHEDULES[regime]
    lr = base_lr
    rescaled = ""
    if rescale_for_batch and batch_size != BATCH_SIZE:
        lr = base_lr * batch_size / BATCH_SIZE
        b = tuple(max(1, round(s * BATCH_SIZE / batch_size)) for s in b)
        rescaled = f" (x {BATCH_SIZE}/{batch_size}: rescaled for the batch, not BiT)"
    decisions.append(Decision(
        "schedule", f"{regime} task: {b[-1]:,} steps; warm-up {b[0]:,} steps, lr / 10 after steps "
        f"{', '.join(map(_fmt, b[1:-1]))}{rescaled}", rule,
        "Schedule length is BiT's only regulariser downstream: longer for more data, no weight "
        "decay or dropout (paper 2.2, 3.3). Boundaries as released (the paper's prose says decays "
        "at 30/60/90%)."))

    # MixUp from the number of examples.
    mixup = 0.0 if n < SMALL_TASK else MIXUP_ALPHA
    decisions.append(Decision(
        "mixup", "none" if mixup == 0 else f"alpha = {mixup}",
        f"n = {n:,} {'<' if mixup == 0 else '>='} 20,000",
        "MixUp helps mid-sized and large tasks but not few-shot ones, and was not useful "
        "upstream (paper 2.2, 3.3)."))

    # Optimiser: fixed.
    decisions.append(Decision(
        "optimizer", f"SGD momentum {MOMENTUM}, base lr {lr:g}, no weight decay",
        "BiT-HyperRule fixes these for every task",
        "One setting for 20+ tasks, from 1 example per class to 1M+ examples, is the point of "
        "the rule: no per-task sweep (paper 2.2, 3.3)."))
    decisions += _batch_decisions(batch_size, batch_split, rescale_for_batch)
    decisions += _augmentation_decisions(flip, random_crop)

    schedule = Schedule(lr, b[0], tuple(b[1:-1]), b[-1])
    what = f"{name!r}: " if name else ""
    return Recipe(
        source=f"BiT-HyperRule for {what}{n:,} training images of {h}x{w}",
        schedule=schedule, batch_size=batch_size, batch_split=batch_split, mixup_alpha=mixup,
        weight_decay=0.0, resize=resize, crop=crop, flip=flip, random_crop=random_crop,
        decisions=tuple(decisions),
    )


def _augmentation_decisions(flip: bool, random_crop: bool) -> list[Decision]:
    if flip and random_crop:
        return [Decision("augmentation", "random crop + horizontal flip",
                         "the task's labels survive both",
                         "BiT's only augmentation downstream (paper 2.2).")]
    off = [a for a, on in (("flip", flip), ("crop", random_crop)) if not on]
    return [Decision("augmentation", f"no {' and no '.join(off)}",
                     f"the data card says {' and '.join(off)} would destroy the label",
                     "e.g. orientation, location or counting tasks (supplementary E).")]


# ------------------------------------------------------------------------------------------------
# Upstream pre-training
# ------------------------------------------------------------------------------------------------


def upstream(
    train_size: int,
    *,
    variant: Literal["S", "M", "L"] = "M",
    batch_size: int = UPSTREAM_BATCH,
    batch_split: int = 1,
    epochs: float | None = None,
    warmup_steps: int | None = None,
) -> Recipe:
    """The upstream pre-training recipe (paper 3.3, 4.2), scalable to small runs.

    ``variant`` "S"/"M" (ILSVRC-2012 / ImageNet-21k): 90 epochs, lr / 10 after epochs 30, 60, 80.
    "L" (JFT-300M): 40 epochs, / 10 after 10, 23, 30, 37. lr = 0.03 * batch / 256, weight decay
    1e-4, no MixUp. ``epochs`` shrinks (or stretches) the run, keeping the decays at the same
    fractions. The 5000 warm-up steps are capped at the fraction of the first lr phase that they
    take in BiT-S (5000 of the 9384 steps before epoch 30); pass ``warmup_steps`` to override.
    """
    if variant not in UPSTREAM_EPOCHS:
        raise ValueError(f"variant must be 'S', 'M' or 'L' (BiT-S/M/L), not {variant!r}")
    if train_size < 1:
        raise ValueError(f"train_size must be >= 1, got {train_size}")
    _check_batch(batch_size, batch_split)
    paper_epochs, paper_decays = UPSTREAM_EPOCHS[variant]
    epochs = float(paper_epochs if epochs is None else epochs)
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    steps_per_epoch = train_size / batch_size
    scale = epochs / paper_epochs
    decays = tuple(round(e * scale * steps_per_epoch) for e in paper_decays)
    total = round(epochs * steps_per_epoch)
    if warmup_steps is None:
        warmup_steps = min(UPSTREAM_WARMUP, round(BIT_S_WARMUP_FRACTION * decays[0]))
        rule = ("the paper's 5000 steps fit" if warmup_steps == UPSTREAM_WARMUP
                else f"5000 steps would not fit: scaled to {BIT_S_WARMUP_FRACTION:.0%} of the "
                     f"{decays[0]:,} steps before the first decay, BiT-S's own proportion")
    else:
        rule = "given"
    lr = UPSTREAM_LR_PER_256 * batch_size / 256
    try:
        schedule = Schedule(lr, warmup_steps, decays, total)
    except ValueError as e:
        raise ValueError(
            f"{_fmt(epochs)} epochs of {train_size:,} images at batch {batch_size} give {total} "
            f"steps: too few for a warm-up and {len(decays)} lr decays. Use more epochs or a "
            "smaller batch."
        ) from e
    decisions = [
        Decision("schedule", f"{_fmt(epochs)} epochs = {total:,} steps of {batch_size}; lr / 10 "
                 f"after steps {', '.join(map(_fmt, decays))}",
                 f"BiT-{variant}: {paper_epochs} epochs, decays at epochs "
                 f"{', '.join(map(str, paper_decays))}" + (f", scaled by {scale:g}"
                                                           if scale != 1 else ""),
                 "Large upstream data needs a long budget; decaying too early hurts the final "
                 "model (paper 3.3, 4.2, Figure 6)."),
        Decision("warm-up", f"{warmup_steps:,} steps", rule,
                 "Linear warm-up keeps the large-batch start stable (paper 3.3; Goyal et al. [9])."),
        Decision("optimizer", f"SGD momentum {MOMENTUM}, lr 0.03 x {batch_size}/256 = {lr:g}",
                 "the linear scaling rule of the paper's upstream runs", "Paper 3.3."),
        Decision("weight decay", f"{UPSTREAM_WEIGHT_DECAY:g}", "always upstream",
                 "Too little weight decay looks faster early but ends worse: weights grow and the "
                 "effective lr shrinks (paper 4.2, Figure 6 right)."),
        Decision("mixup", "none", "upstream data is abundant",
                 "MixUp was not useful for pre-training BiT (paper 2.2)."),
        Decision("loss", "softmax CE for single labels, sigmoid CE for multi-hot targets",
                 "ImageNet-21k and JFT are multi-label", "Paper 3.3; fit picks it from the "
                 "target type."),
        Decision("augmentation", "Inception-style random-resized crop to 224 (8-100% of the "
                 "area, aspect 3/4-4/3) + random horizontal flip; test: resize to 224",
                 "upstream pre-training (paper 3.3)", "bitkit.data.transforms."
                 "InceptionTransform, chosen because resize is None."),
    ]
    return Recipe(
        source=f"BiT-{variant} upstream pre-training on {train_size:,} images",
        schedule=schedule, batch_size=batch_size, batch_split=batch_split, mixup_alpha=0.0,
        weight_decay=UPSTREAM_WEIGHT_DECAY, resize=None, crop=224, decisions=tuple(decisions),
    )


def resolution_for(card: Any, recipe: Recipe, resolution: Any = None) -> Recipe:
    """The recipe at the resolution a run really trains at: the one place that decides it.

    ``resolution``: None (default) uses the card's ``resolution`` when it has one (embedded
    and teaching cards carry a CPU-sized one) and the recipe's otherwise; ``"recipe"`` always
    uses the recipe's (BiT's 160/128 or 512/480, or upstream's Inception crop to 224);
    ``[resize, crop]`` is explicit. Any change is recorded as a decision
    (:meth:`Recipe.at_resolution`), so a printed recipe says what trained.
    ``bitkit.experiments`` and run files (``bitkit.runfile``) both call this.
    """
    if isinstance(resolution, (list, tuple)):
        if len(resolution) != 2:
            raise ValueError(f"resolution must be [resize, crop], not {resolution!r}")
        resize, crop = (int(v) for v in resolution)
        if not 0 < crop <= resize:
            raise ValueError(f"resolution: need 0 < crop <= resize; got {resolution!r}")
        return recipe.at_resolution(resize, crop, why="given (resolution)")
    if resolution == "recipe":
        return recipe
    if resolution is not None:
        raise ValueError(f"resolution must be [resize, crop], 'recipe' or absent, not "
                         f"{resolution!r}")
    teaching = getattr(card, "resolution", None)
    if teaching is None:
        return recipe
    return recipe.at_resolution(*teaching, why=f"the {getattr(card, 'name', 'dataset')} card's "
                                "teaching resolution, sized for a CPU")


# ------------------------------------------------------------------------------------------------
# Random search (supplementary A)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """The random hyper-parameter search of supplementary A, as a seeded sampler.

    Trial ``i`` of seed ``s`` is a function of ``(s, i)`` only, so the first 20 of 40 trials are
    the first 20 of any longer search with the same seed. Supplementary A does not give a schedule
    shape or a resize size; a trial uses the paper's 3.3 shape (5% warm-up, lr / 10 at 30, 60 and
    90% of the steps) and resizes to 1.25x the crop (HyperRule's 160 -> 128).
    """

    lr: tuple[float, float] = (1e-4, 1e-1)
    steps: tuple[int, ...] = (500, 1000, 2000, 4000, 8000, 16000)
    dropout: tuple[float, float] = (0.0, 0.7)
    decay_to_init: tuple[float, float] = (1e-6, 1e-1)
    mixup: tuple[float | None, ...] = (None, 0.05, 0.1, 0.2, 0.4)
    resolution: tuple[int, ...] = (64, 128, 192, 256, 320, 384)
    batch_size: int = BATCH_SIZE

    def sample(self, trial: int, seed: int = 0, *, batch_split: int = 1) -> Recipe:
        """Trial number ``trial`` (0-based) of the search with ``seed``."""
        if trial < 0:
            raise ValueError(f"trial must be >= 0, got {trial}")
        _check_batch(self.batch_size, batch_split)
        rng = np.random.default_rng([seed, trial])
        lr = float(np.exp(rng.uniform(np.log(self.lr[0]), np.log(self.lr[1]))))
        steps = int(rng.choice(self.steps))
        dropout = float(rng.uniform(*self.dropout))
        wd = float(np.exp(rng.uniform(np.log(self.decay_to_init[0]),
                                      np.log(self.decay_to_init[1]))))
        mixup = self.mixup[int(rng.integers(len(self.mixup)))]
        res = int(rng.choice(self.resolution))
        schedule = Schedule(lr, max(1, round(0.05 * steps)),
                            tuple(round(f * steps) for f in (0.3, 0.6, 0.9)), steps)
        space = "supplementary A random search"
        decisions = (
            Decision("lr", f"{lr:.3g}", f"log-uniform in [{self.lr[0]:g}, {self.lr[1]:g}]", space),
            Decision("steps", f"{steps:,}", f"one of {list(self.steps)}", space),
            Decision("dropout", f"{dropout:.3f} (penultimate layer)",
                     f"uniform in [{self.dropout[0]}, {self.dropout[1]}]", space),
            Decision("decay to init", f"{wd:.3g}", f"log-uniform in [{self.decay_to_init[0]:g}, "
                     f"{self.decay_to_init[1]:g}]", space + " (weight decay towards the "
                     "pre-trained weights, Li et al. [29])"),
            Decision("mixup", "none" if not mixup else f"alpha = {mixup}",
                     f"one of {list(self.mixup)}", space),
            Decision("resolution", f"crop {res}, resize {res * 5 // 4}",
                     f"one of {list(self.resolution)}", space),
        )
        return Recipe(
            source=f"random-search trial {trial} (seed {seed})", schedule=schedule,
            batch_size=self.batch_size, batch_split=batch_split, mixup_alpha=float(mixup or 0.0),
            weight_decay=0.0, resize=res * 5 // 4, crop=res, decay_to_init=wd, dropout=dropout,
            decisions=decisions,
        )

    def trials(self, n: int, seed: int = 0, *, batch_split: int = 1) -> list[Recipe]:
        """The first ``n`` trials (supplementary A ran 40 per VTAB task)."""
        return [self.sample(i, seed, batch_split=batch_split) for i in range(n)]


# ------------------------------------------------------------------------------------------------
# Command line: bitkit hyperrule
# ------------------------------------------------------------------------------------------------


def hyperrule_command(args: argparse.Namespace) -> int:
    """``bitkit hyperrule [DATASET] [--train-size N] [--image-size H W] ...``: the recipe for
    a data card (as ``hyperrule(card)``), or for explicit sizes, which override the card's."""
    card = None
    if args.card:
        from bitkit.data.cards import get_card

        card = get_card(args.card)
    elif args.train_size is None or args.image_size is None:
        raise ValueError("give a dataset card name (`bitkit cards` lists them), or both "
                         "--train-size N and --image-size H W")
    recipe = hyperrule(card, train_size=args.train_size, image_size=args.image_size,
                       batch_size=args.batch_size, batch_split=args.batch_split,
                       base_lr=args.base_lr, rescale_for_batch=args.rescale_for_batch)
    print(json.dumps(recipe.to_dict(), indent=2) if args.json else recipe.explain())
    return 0
