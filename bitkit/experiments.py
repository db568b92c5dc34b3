"""The two experiments every lesson runs: pre-train upstream, then transfer with BiT-HyperRule.

Each is bitkit's spine written out once: data card -> recipe -> BiT preprocessing ->
``fit`` -> ``evaluate.predict``. Notebooks call these so a lesson shows the idea, not the
plumbing; the functions are short enough to read when a student asks what happens inside.

Upstream runs are cached on disk by their settings: the quickstart pre-trains once and every
later notebook reuses that model. A cache entry is a normal ``fit`` output folder, so an
interrupted pre-training resumes from its last checkpoint the next time it is asked for.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from bitkit import __version__, data, hyperrule, weights
from bitkit.data import world
from bitkit.evaluate import Report, predict
from bitkit.events import Event, Observer, RunControl, replay
from bitkit.fileio import atomic_write_text
from bitkit.hyperrule import Recipe
from bitkit.models import ResNetV2, create
from bitkit.train import METRICS_FILE, FitResult, TrainConfig, TrainingDiverged, fit

FINAL_WEIGHTS = "model.safetensors"
SETTINGS_FILE = "settings.json"


def default_cache_dir() -> Path:
    """``$BITKIT_CACHE/pretrained`` or ``~/.cache/bitkit/pretrained``."""
    root = os.environ.get("BITKIT_CACHE") or Path.home() / ".cache" / "bitkit"
    return Path(root) / "pretrained"


# ---------------------------------------------------------------------------------------------
# Upstream
# ---------------------------------------------------------------------------------------------


def pretrain(
    model: str = "R14x0.25",
    upstream: str = "world-upstream",
    *,
    size: int = 50_000,
    steps: int = 600,
    batch_size: int = 128,
    variant: str = "S",
    seed: int = 0,
    base_lr: float | None = None,
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    observers: Sequence[Observer] = (),
    control: RunControl | None = None,
    progress: bool = True,
    **train_overrides: Any,
) -> ResNetV2:
    """Pre-train ``model`` on ``size`` upstream images for ``steps`` steps (paper 3.3, 4.2).

    The upstream schedule of BiT-``variant`` (lr 0.03 x batch/256, warm-up, decays at 30/60/80
    of 90 epochs, weight decay 1e-4) compressed to ``steps``. The result is cached under
    ``cache_dir`` by every setting that changes the weights; a second call loads it in a second
    and sends ``observers`` the events the run recorded (``events.replay``), so a training
    monitor shows the curves of the run that built the cached model.
    ``base_lr`` replaces the rule's peak lr (0.03 x batch/256): that rule is tuned for 90 epochs,
    and a CPU-sized run of a few hundred steps at batch 64-128 learns little at 0.0075-0.015, so
    quick demonstrations and tests (``tests/test_world_transfer.py``) pass a larger one.

    ``size`` only applies to embedded (generated) upstream data; a real dataset (``path=`` to a
    local copy, e.g. ImageNet as parquet or an image folder, or its hub copy) trains on its
    whole training split. Resolution: :func:`bitkit.hyperrule.resolution_for`: an embedded
    card's teaching resolution, else the upstream Inception-style crop to 224 + flip.
    """
    card = data.get_card(upstream)
    embedded = card.source.kind == "embedded"
    if path is not None and embedded:
        raise ValueError(f"{upstream} is generated (embedded): it has no local copy to pass "
                         "as path=; use size= to choose how many images")
    # Generator options exist for embedded data only; the world stays fixed across seeds.
    raw = data.load(card, "train", path=path, **({"size": size} if embedded else {}))
    size = size if embedded else len(raw)
    if size < batch_size:
        raise ValueError(f"size ({size}) must be at least one batch ({batch_size}) of images")
    settings = _pretrain_settings(model, upstream, size=size, steps=steps, batch_size=batch_size,
                                  variant=variant, seed=seed, base_lr=base_lr, path=path,
                                  train_overrides=train_overrides)
    folder = _cache_folder(settings, cache_dir)
    final = folder / FINAL_WEIGHTS
    net = create(model, num_classes=raw.num_classes)
    if final.is_file():
        # The cached model is this upstream run itself, head included: lessons predict upstream
        # classes with it (02, 08) and finetune() replaces the head when it transfers.
        weights.load(net, final, keep_head=True)
        # The run that built it recorded every event: a monitor shows its curves as if it ran.
        replay(folder / METRICS_FILE, observers)
        return net

    recipe = hyperrule.upstream(size, variant=variant, batch_size=batch_size,
                                epochs=steps * batch_size / size)
    if base_lr is not None:
        recipe = dataclasses.replace(
            recipe, schedule=dataclasses.replace(recipe.schedule, base_lr=base_lr),
            decisions=recipe.decisions + (hyperrule.Decision(
                "lr", f"{base_lr:g} instead of {recipe.schedule.base_lr:g}", "given (base_lr)",
                "A short CPU run learns little at the 90-epoch rule's lr."),))
    recipe = hyperrule.resolution_for(card, recipe)
    config = TrainConfig.from_recipe(recipe, seed=seed, progress=progress, **train_overrides)
    torch.manual_seed(seed)
    net = create(model, num_classes=raw.num_classes)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / SETTINGS_FILE, json.dumps(settings, indent=2))
    train = data.preprocess(raw, train=True, resize=recipe.resize, crop=recipe.crop)
    result = fit(net, train, config, out_dir=folder, observers=observers, control=control)
    if result.step == config.schedule.total_steps:  # a stopped run stays resumable, not final
        weights.save_safetensors(net, final)
    return net


def _pretrain_settings(model: str, upstream: str, *, size: int, steps: int, batch_size: int,
                       variant: str, seed: int, base_lr: float | None,
                       path: str | os.PathLike | None,
                       train_overrides: dict[str, Any]) -> dict[str, Any]:
    """Every setting that changes a pre-trained model's weights: its cache key."""
    settings = dict(model=model, upstream=upstream, size=size, steps=steps, batch_size=batch_size,
                    variant=variant, seed=seed, train=train_overrides, bitkit=__version__,
                    world=world.VERSION)  # a changed world must not reuse an old model
    if base_lr is not None:  # only when given: the rule's own lr keeps its usual key
        settings["base_lr"] = base_lr
    if path is not None:
        settings["path"] = str(Path(path).expanduser().resolve())
    return settings


def is_pretrained(model: str = "R14x0.25", upstream: str = "world-upstream", *,
                  size: int = 50_000, steps: int = 600, batch_size: int = 128,
                  variant: str = "S", seed: int = 0, base_lr: float | None = None,
                  cache_dir: str | os.PathLike | None = None, **train_overrides: Any) -> bool:
    """Whether :func:`pretrain` with these (embedded-upstream) settings would load a finished
    model from the cache instead of training (``bitkit prepare --list`` reports it)."""
    settings = _pretrain_settings(model, upstream, size=size, steps=steps, batch_size=batch_size,
                                  variant=variant, seed=seed, base_lr=base_lr, path=None,
                                  train_overrides=train_overrides)
    return (_cache_folder(settings, cache_dir) / FINAL_WEIGHTS).is_file()


def _cache_folder(settings: dict[str, Any], cache_dir: str | os.PathLike | None) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{settings['model']}-{settings['upstream']}-{settings['size']}-{key}"
    return Path(cache_dir or default_cache_dir()) / name


# ---------------------------------------------------------------------------------------------
# Transfer
# ---------------------------------------------------------------------------------------------


@dataclass
class TransferRun:
    """One fine-tuning run: the recipe, how training ended, and the test report."""

    task: str
    train_size: int
    model: ResNetV2
    recipe: Recipe
    result: FitResult
    report: Report

    @property
    def top1(self) -> float:
        return self.report.top1

    def summary(self) -> dict[str, Any]:
        return {"task": self.task, "model": self.model.name, "train_size": self.train_size,
                "steps": self.recipe.schedule.total_steps, "top1": self.top1}

    def evaluate(self, dataset: Dataset, *, progress: bool = True) -> Report:
        """The fine-tuned model on another raw dataset (e.g. a validation split), preprocessed
        as the test set was: resized to the recipe's crop."""
        return predict(self.model, data.preprocess(dataset, train=False, resize=self.recipe.resize,
                                                   crop=self.recipe.crop), progress=progress)


def finetune(
    task: str,
    start: ResNetV2 | str = "R14x0.25",
    *,
    train_set: Dataset | None = None,
    test_set: Dataset | None = None,
    recipe: Recipe | None = None,
    train_size: int | None = None,
    shots: int | None = None,
    test_size: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    base_lr: float | None = None,
    path: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    observers: Sequence[Observer] = (),
    control: RunControl | None = None,
    progress: bool = True,
    **train_overrides: Any,
) -> TransferRun:
    """Fine-tune ``start`` on ``task`` with BiT-HyperRule and evaluate on its test split.

    ``start`` is a pre-trained model (copied; its head is replaced by a zero-initialised one,
    paper 3.3) or a model name (the same architecture trained from scratch: the baseline).
    ``shots`` takes a seeded, balanced k-shot subset; ``train_size`` the first n examples of a
    seeded shuffle. ``steps`` compresses the rule's schedule for CPU runs (labelled as such in
    the recipe's explanation); None keeps BiT's. ``batch_size``: None is 64. ``base_lr``
    replaces the rule's 0.003 (the rule's one fixed number; None keeps it): a fair
    from-scratch baseline needs its own, larger lr, so comparisons such as
    ``bench/world_transfer.py`` sweep it per arm. ``path`` is a local copy of the task's data
    (``bitkit.data.load(task, split, path=...)``): the VTAB-1k tasks and other local-only cards
    need it.

    Data and recipe already chosen (e.g. the VTAB-1k splits and search trials of lesson 05):

    - ``train_set``: raw training data to use as is (a ``bitkit.data`` dataset, e.g. a
      ``SubsetDataset``; it needs ``num_classes``, and a ``card`` unless ``recipe`` is given).
      Not with ``shots``/``train_size``, which choose a subset of the task's own train split.
    - ``test_set``: raw test data to use as is; not with ``test_size``.
    - ``recipe``: a ready :class:`~bitkit.hyperrule.Recipe`, used exactly as given (schedule,
      batch, resolution, regulariser: nothing is recomputed or resized). Not with ``steps``,
      ``batch_size`` or ``base_lr``, which build BiT-HyperRule's recipe; shorten a given one
      with ``recipe.shortened(n)``.

    ``task`` names the run (and gives the test split when ``test_set`` is None); a ``train_set``
    of another card is refused. ``path`` is refused when both sets are given: nothing is read.
    """
    _check_finetune_options(task, train_set=train_set, test_set=test_set, recipe=recipe,
                            train_size=train_size, shots=shots, test_size=test_size,
                            steps=steps, batch_size=batch_size, base_lr=base_lr, path=path)
    if train_set is None:
        raw_train = data.load(task, "train", path=path)
        card = raw_train.card
        train_set = raw_train
        if shots is not None:
            train_set = data.kshot(raw_train, shots, seed)
        elif train_size is not None:
            if not 0 < train_size <= len(raw_train):
                raise ValueError(f"train_size must be in 1..{len(raw_train)} for {task!r}, "
                                 f"got {train_size}")
            order = torch.randperm(len(raw_train), generator=torch.Generator().manual_seed(seed))
            train_set = data.SubsetDataset(raw_train, order[:train_size].numpy(),
                                           tag=f"n={train_size}")
    else:
        card = getattr(train_set, "card", None)
    num_classes, class_names = train_set.num_classes, getattr(train_set, "class_names", None)

    if recipe is None:
        recipe = hyperrule.hyperrule(card, train_size=len(train_set),
                                     batch_size=64 if batch_size is None else batch_size,
                                     base_lr=hyperrule.BASE_LR if base_lr is None else base_lr)
        if steps is not None:
            recipe = recipe.shortened(steps)
        recipe = hyperrule.resolution_for(card, recipe)  # a card's teaching resolution, if any

    if test_set is None:
        eval_split = (card or data.get_card(task)).eval_split
        test_set = data.load(task, eval_split, path=path)
        if test_size is not None:
            test_set = data.SubsetDataset(test_set, range(min(test_size, len(test_set))))

    if isinstance(start, str):
        torch.manual_seed(seed)
        model = create(start, num_classes=num_classes)
    else:
        model = copy.deepcopy(start).reset_head(num_classes, zero_init=True)
    config = TrainConfig.from_recipe(recipe, seed=seed, progress=progress, **train_overrides)
    sizes = dict(resize=recipe.resize, crop=recipe.crop)
    result = fit(model, data.preprocess(train_set, train=True, **sizes), config,
                 out_dir=out_dir, observers=observers, control=control)
    report = predict(model, data.preprocess(test_set, train=False, **sizes), progress=progress,
                     class_names=class_names)
    return TransferRun(task, len(train_set), model, recipe, result, report)


@dataclass
class LrSweep:
    """Fine-tuning runs that differ only in ``base_lr``, the lr chosen on held-out data."""

    best: TransferRun                # the chosen lr's run; its report is on the test split
    lr: float
    val_top1: dict[float, float]     # lr -> top-1 on the held-out training examples
    test_top1: dict[float, float]    # lr -> top-1 on the test split (reported, never chosen on)
    # (a diverged lr scores NaN on both and is never chosen)
    out_dirs: dict[float, Path] = dataclasses.field(default_factory=dict)  # lr -> fit's folder

    @property
    def top1(self) -> float:
        return self.best.top1


class _Timeline:
    """One run of a sweep, shown to ``observers`` as a stretch of one long run.

    A sweep is ``runs`` fits of ``total_steps`` each; an observer such as the notebook's
    training monitor would otherwise see its step counter fall back to 0 at every new lr and
    report the end of the sweep after the first fit. Steps are shifted by ``index`` runs, the
    total is the whole sweep's, and only the first run's ``start`` and the last run's ``end``
    pass through, so progress, ETA and the loss curve cover the sweep, one lr after another.
    """

    def __init__(self, observers: Sequence[Observer], index: int, runs: int) -> None:
        self.observers, self.index, self.runs = tuple(observers), index, runs

    def __call__(self, event: Event) -> None:
        # a middle run's end (done, or diverged: sweep_lr goes on with the next lr) is not the
        # sweep's; an interrupted run does end it
        if (event.kind == "start" and self.index > 0) or (
                event.kind == "end" and self.index < self.runs - 1
                and not (event.reason or "").startswith("interrupted")):
            return
        shifted = dataclasses.replace(event, step=event.step + self.index * event.total_steps,
                                      total_steps=event.total_steps * self.runs)
        for observer in self.observers:
            observer(shifted)


def sweep_lr(task: str, start: ResNetV2 | str, lrs: Sequence[float], *, train_size: int,
             val_size: int, seed: int = 0, path: str | os.PathLike | None = None,
             out_dir: str | os.PathLike | None = None, observers: Sequence[Observer] = (),
             **finetune_options: Any) -> LrSweep:
    """Fine-tune ``start`` on ``task`` once per lr in ``lrs`` and keep the best on validation.

    ``train_size`` and ``val_size`` disjoint examples of the task's train split are drawn from
    ``seed`` (``data.vtab1k_split(how="random")``, VTAB-1k's 800/200 protocol at other sizes,
    not VTAB's own slices); every run trains on the first and is scored on the second, and
    the test split only reports the chosen run. Why not pick on test: the maximum of several
    noisy test scores is biased up, and by more for whichever arm of a comparison has the
    noisier runs. A from-scratch baseline
    needs a larger lr than BiT's 0.003, so comparisons (``bench/world_transfer.py``) give each
    arm its own sweep; give every arm the same ``lrs``, ``train_size``, ``val_size`` and
    ``seed`` and each is tuned the same way, on the same examples. ``finetune_options`` go to
    :func:`finetune` (``steps``, ``test_size``, ``batch_size``, ...).

    ``out_dir``: each lr's run writes its ``fit`` folder (``metrics.jsonl``, checkpoint) to
    ``out_dir/lr=<lr>`` (``LrSweep.out_dirs``). ``observers`` see the whole sweep as one run of
    ``len(lrs)`` x steps, one lr after another (a training monitor shows every lr's curve and
    the sweep's progress and ETA).
    """
    if not lrs:
        raise ValueError("sweep_lr: give at least one lr in lrs")
    if train_size is None:
        raise ValueError("sweep_lr holds out val_size training examples, so train_size must be "
                         "a number (e.g. 1000), not None")
    train, val = data.vtab1k_split(data.load(task, "train", path=path), seed=seed,
                                   train=train_size, val=val_size, how="random")
    best_lr, best = None, None
    val_top1, test_top1, out_dirs = {}, {}, {}
    for i, lr in enumerate(lrs):
        folder = None if out_dir is None else Path(out_dir) / f"lr={lr:g}"
        if folder is not None:
            out_dirs[lr] = folder
        try:
            run = finetune(task, start, train_set=train, seed=seed, base_lr=lr, path=path,
                           out_dir=folder,
                           observers=[_Timeline(observers, i, len(lrs))] if observers else (),
                           **finetune_options)
        except TrainingDiverged:  # too large an lr is a result of the sweep, not its end
            val_top1[lr] = test_top1[lr] = float("nan")
            continue
        val_top1[lr], test_top1[lr] = run.evaluate(val, progress=False).top1, run.top1
        if best is None or val_top1[lr] > val_top1[best_lr]:  # ties: the first lr
            best_lr, best = lr, run  # only the best model is kept, not one per lr
    if best is None:
        raise TrainingDiverged(f"sweep_lr: every lr of {list(lrs)} diverged on {task!r}; "
                               "try smaller ones")
    return LrSweep(best, best_lr, val_top1, test_top1, out_dirs)


def _check_finetune_options(task: str, *, train_set: Dataset | None, test_set: Dataset | None,
                            recipe: Recipe | None, train_size: int | None, shots: int | None,
                            test_size: int | None, steps: int | None, batch_size: int | None,
                            base_lr: float | None, path: str | os.PathLike | None) -> None:
    """Refuse options that contradict each other, naming both and the way out."""

    def given(**options: Any) -> str:
        return ", ".join(f"{k}=" for k, v in options.items() if v is not None)

    if shots is not None and train_size is not None:
        raise ValueError("finetune: shots= (a k-shot subset) and train_size= (the first n of a "
                         "shuffle) both choose the training subset; pass one of them")
    if train_set is not None:
        if shots is not None or train_size is not None:
            raise ValueError(f"finetune: train_set= is the training data as given, but "
                             f"{given(shots=shots, train_size=train_size)} choose a subset of the "
                             f"task's own train split; pass one or the other (a k-shot subset of "
                             f"your set: train_set=bitkit.data.kshot(your_set, k, seed))")
        if not hasattr(train_set, "num_classes"):
            raise ValueError(f"finetune: train_set= needs a num_classes attribute for the new "
                             f"head ({type(train_set).__name__} has none); bitkit.data datasets "
                             f"have it")
        card = getattr(train_set, "card", None)
        if card is None and recipe is None:
            raise ValueError("finetune: train_set= has no data card (.card), which BiT-HyperRule "
                             "needs for the image size and the allowed augmentations; pass "
                             "recipe= as well")
        if (card is not None and card.source.kind != "local" and isinstance(task, str)
                and task.strip().lower() != card.name):
            raise ValueError(f"finetune: train_set= is {card.name!r} data but task={task!r}; "
                             f"pass task={card.name!r}")
    if test_set is not None and test_size is not None:
        raise ValueError("finetune: test_set= is the test data as given, but test_size= takes "
                         "the first n of the task's own test split; pass one or the other (the "
                         "first n of your set: bitkit.data.SubsetDataset(your_set, range(n)))")
    if train_set is not None and test_set is not None and path is not None:
        raise ValueError("finetune: path= locates the task's data, but train_set= and test_set= "
                         "are both given, so nothing would be read from it; drop path=")
    if recipe is not None:
        if not isinstance(recipe, Recipe):
            raise TypeError(f"finetune: recipe= must be a bitkit.hyperrule.Recipe, not "
                            f"{type(recipe).__name__}")
        rule = given(steps=steps, batch_size=batch_size, base_lr=base_lr)
        if rule:
            raise ValueError(f"finetune: recipe= is used as given, but {rule} build "
                             f"BiT-HyperRule's recipe; drop them (a shorter given recipe: "
                             f"recipe.shortened(n))")
