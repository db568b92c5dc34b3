"""Run files: a training run described in YAML, for ``bitkit train`` and ``torchrun``.

A run file names a model, the data, a rule for the hyper-parameters (BiT-HyperRule, the upstream
schedule or a random-search trial) and any :class:`~bitkit.train.TrainConfig` overrides, so the
same file runs in a notebook (:func:`run`), in a terminal (``bitkit train --config run.yaml``)
and on many GPUs (``torchrun ... -m bitkit train --config run.yaml``; :func:`launch` from a
notebook). docs/distributed.md has an annotated example.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bitkit import distributed, inputs
from bitkit.events import Observer
from bitkit.hyperrule import Recipe, resolution_for
from bitkit.train import METRICS_FILE, FitResult, TrainConfig, TrainingDiverged, fit


def _model_name(v: Any) -> str:
    from bitkit.models import get_config

    name = inputs.text()(v)
    try:
        get_config(name)
    except ValueError as e:
        raise inputs.Invalid("", problem=str(e)) from None
    return name


RECIPES = ("hyperrule", "upstream", "search")

#: What a run file may say; each value is checked by bitkit.inputs (types, ranges, names).
RUN_FILE_RULES: dict[str, inputs.Rule] = {
    "model": _model_name,
    "weights": inputs.optional(inputs.text()),
    # Transfer zero-initialises the head; true restores the file's (same class count), e.g. to
    # continue fine-tuning a fine-tuned file on its own task.
    "keep_head": inputs.optional(inputs.boolean()),
    "num_classes": inputs.optional(inputs.integer(1)),
    "train_data": inputs.text(),
    "eval_data": inputs.optional(inputs.text()),
    "out_dir": inputs.text(),
    "recipe": inputs.one_of(*RECIPES),
    "recipe_args": inputs.mapping_of(inputs.text(), inputs.anything,
                                     "a mapping of argument: value"),
    "resolution": inputs.optional(inputs.either(
        inputs.one_of("recipe"), inputs.list_of(inputs.integer(1), length=2),
        expected="[resize, crop] (two whole numbers) or 'recipe'")),
    "train": inputs.fields(TrainConfig.rules(), what="a mapping of TrainConfig field: value"),
    "tensorboard": inputs.optional(inputs.either(
        inputs.boolean(), inputs.text(), expected="true (out_dir/tensorboard) or a folder")),
}
RUN_KEYS = set(RUN_FILE_RULES)
_RUN_FILE = inputs.fields(RUN_FILE_RULES, required=("model", "train_data", "out_dir"),
                          what="a YAML mapping of run-file key: value at the top level")


def recipe_arg_rules(recipe: str) -> dict[str, inputs.Rule]:
    """The ``recipe_args`` a recipe takes, with the types its function declares."""
    from bitkit import hyperrule as hr

    if recipe == "hyperrule":
        return inputs.rules_from_hints(hr.hyperrule, skip={"card"})
    if recipe == "upstream":
        return inputs.rules_from_hints(hr.upstream)
    return {**inputs.rules_from_hints(hr.SearchSpace), "trial": inputs.integer(0),
            "seed": inputs.integer(0)}


def check_run_spec(given: inputs.Document | dict[str, Any]) -> dict[str, Any]:
    """A run file's contents checked (every key, type and range, recipe_args against the
    recipe's own arguments) with the defaults filled in; errors name the file and line."""
    doc = given if isinstance(given, inputs.Document) else inputs.Document(given)
    spec = inputs.check(doc, _RUN_FILE)
    if spec.get("keep_head") and not spec.get("weights"):
        raise inputs.error(inputs.Invalid("", problem="true restores the head of the weights "
                                          "file, but the run file names no weights; add "
                                          "weights: FILE or remove keep_head"
                                          ).within("keep_head"), doc)
    spec.setdefault("recipe", "hyperrule")
    spec.setdefault("recipe_args", {})
    spec.setdefault("train", {})
    args_rule = inputs.fields(recipe_arg_rules(spec["recipe"]),
                              what=f"a mapping of {spec['recipe']} argument: value")
    try:
        spec["recipe_args"] = args_rule(spec["recipe_args"])
    except inputs.Invalid as e:
        raise inputs.error(e.within("recipe_args"), doc) from None
    return spec


def load_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a run file. See docs/distributed.md for an annotated example."""
    return check_run_spec(inputs.read_yaml(path, "run config"))


def load_data(ref: str, default_split: str) -> Dataset:
    """A dataset from a run file: a ``.pt``/``.npz`` tensor file, or ``name[:split]``.

    Tensor files hold ``images`` (N, 3, H, W) floats in [-1, 1] and ``labels`` (N,) integers or
    (N, C) multi-hot floats, used as they are. Names give the *raw* dataset of
    ``bitkit.data.load(name, split)``; :func:`prepare` applies BiT preprocessing to it.
    """
    if ref.endswith((".pt", ".npz")):
        return _TensorFile(Path(ref))
    name, _, split = ref.partition(":")
    from bitkit import data  # only runs that name a dataset need the data package

    return data.load(name, split or default_split)


def prepare(raw: Dataset, recipe: Recipe, resolution: Any, *, train: bool) -> Dataset:
    """BiT preprocessing for a named dataset (tensor files pass through unchanged).

    ``resolution``: ``[resize, crop]``, ``"recipe"`` (BiT-HyperRule's 160/128 or 512/480, or
    the upstream recipe's Inception-style crop to 224), or None: the card's own teaching
    resolution when it has one, else the recipe's. The choice is
    :func:`bitkit.hyperrule.resolution_for`, the same one ``bitkit.experiments`` makes;
    :func:`plan` applies it to the recipe first, so the recipe it returns is what trains.
    """
    if isinstance(raw, _TensorFile):
        return raw
    from bitkit import data

    recipe = resolution_for(getattr(raw, "card", None), recipe, resolution)
    return data.preprocess(raw, train, resize=recipe.resize, crop=recipe.crop)


class _TensorFile(Dataset):
    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} does not exist")
        if path.suffix == ".pt":
            d = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with np.load(path, allow_pickle=False) as z:
                d = {k: torch.from_numpy(z[k]) for k in z.files}
        if not ({"images", "labels"} <= set(d)):
            raise ValueError(f"{path} must hold 'images' and 'labels'; it holds {sorted(d)}")
        self.images, self.labels = d["images"].float(), d["labels"]
        if self.images.dim() != 4 or self.images.shape[1] != 3 or len(self.images) != len(
                self.labels):
            raise ValueError(f"{path}: images must be (N, 3, H, W) with N labels; got "
                             f"{tuple(self.images.shape)} and {len(self.labels)} labels")
        self.train_size, self.image_size = len(self.images), tuple(self.images.shape[2:])
        multi = self.labels.is_floating_point() and self.labels.dim() == 2
        self.num_classes = self.labels.shape[1] if multi else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        y = self.labels[i]
        return self.images[i], (y if y.dim() else int(y))


def recipe_for(spec: dict[str, Any], train_data: Dataset) -> Recipe:
    """The run file's ``recipe`` ("hyperrule", "upstream" or "search") applied to its data.

    HyperRule counts the examples actually trained on (a k-shot subset, not the whole card) and
    reads the image size, flip and crop from the dataset's card.
    """
    from bitkit import hyperrule as hr

    kind, args = spec["recipe"], dict(spec["recipe_args"] or {})  # checked by check_run_spec
    if kind == "hyperrule":
        args.setdefault("train_size", len(train_data))
        return hr.hyperrule(getattr(train_data, "card", train_data), **args)
    if kind == "upstream":
        return hr.upstream(args.pop("train_size", len(train_data)), **args)
    trial, seed = args.pop("trial", 0), args.pop("seed", 0)
    return hr.SearchSpace(**args).sample(trial, seed)


@dataclass
class RunPlan:
    """What a run file trains: the recipe at the resolution that really trains (print
    ``recipe.explain()``), the preprocessed data, the config and the number of classes."""

    recipe: Recipe
    config: TrainConfig
    train_data: Dataset
    eval_data: Dataset | None
    num_classes: int


def plan(config: str | os.PathLike | dict[str, Any]) -> RunPlan:
    """Everything :func:`run` builds before ``fit``, from a run file (or its loaded spec).

    The resolution follows :func:`bitkit.hyperrule.resolution_for`, like
    ``bitkit.experiments``: the card's teaching resolution is recorded in the recipe (a
    decision in its explanation), never applied behind its back; eval data uses the training
    recipe's sizes (test time: resize to the training crop).
    """
    spec = check_run_spec(config) if isinstance(config, dict) else load_run_config(config)
    raw_train = load_data(str(spec["train_data"]), "train")
    recipe = recipe_for(spec, raw_train)
    if not isinstance(raw_train, _TensorFile):
        recipe = resolution_for(getattr(raw_train, "card", None), recipe, spec.get("resolution"))
    train_data = prepare(raw_train, recipe, "recipe", train=True)
    eval_data = None
    if spec.get("eval_data"):
        eval_data = prepare(load_data(str(spec["eval_data"]), "test"), recipe, "recipe",
                            train=False)
    train_config = TrainConfig.from_recipe(recipe, **spec["train"])
    num_classes = spec.get("num_classes") or getattr(raw_train, "num_classes", None)
    if num_classes is None:
        raise ValueError(f"{spec['train_data']}: set num_classes in the run file (the dataset "
                         "does not say)")
    return RunPlan(recipe, train_config, train_data, eval_data, int(num_classes))


def run(config_path: str | os.PathLike, observers: Sequence[Observer] = ()) -> FitResult:
    """Build the model and data a run file describes (:func:`plan`) and ``fit`` them.

    ``weights`` start the run with BiT transfer semantics: the body from the file, a
    zero-initialised head whatever the file's classes; ``keep_head: true`` restores the file's
    head (it must have ``num_classes`` classes).
    """
    from bitkit.models import create

    spec = load_run_config(config_path)
    p = plan(spec)
    torch.manual_seed(p.config.seed)  # the same seed gives the same initial head and weights
    model = create(spec["model"], num_classes=p.num_classes, weights=spec.get("weights"),
                   keep_head=bool(spec.get("keep_head")))
    observers = [*observers, *tensorboard_observer(spec, p.config)]
    return fit(model, p.train_data, p.config, eval_data=p.eval_data, out_dir=spec["out_dir"],
               observers=observers)


def tensorboard_observer(spec: dict[str, Any], config: TrainConfig) -> list[Observer]:
    """The run file's ``tensorboard:`` key: ``true`` writes event files into ``out_dir`` (so
    ``tensorboard --logdir runs/`` names each run by its folder), a path writes them there."""
    where = spec.get("tensorboard")
    if not where:
        return []
    from bitkit.events import TensorBoardLogger

    log_dir = spec["out_dir"] if where is True else where
    return [TensorBoardLogger(log_dir, {**spec, "train": config.to_dict()})]


def launch(config_path: str | os.PathLike, nproc_per_node: int = 2,
           **kwargs: Any) -> distributed.Launched:
    """Start the run file under ``torchrun`` with N processes; follow it with ``.follow(obs)``."""
    spec = load_run_config(config_path)
    return distributed.torchrun(["-m", "bitkit", "train", "--config", str(config_path)],
                                metrics=Path(spec["out_dir"]) / METRICS_FILE,
                                nproc_per_node=nproc_per_node, **kwargs)


def train_command(args: argparse.Namespace) -> int:
    """``bitkit train --config RUN.yaml`` (also ``torchrun ... -m bitkit train ...``)."""
    try:
        result = run(args.config)
    except TrainingDiverged as e:
        print(f"bitkit train: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()
    if distributed.env_info().is_main:
        print(f"bitkit train: {result.reason} at step {result.step}", file=sys.stderr)
    return 0
