"""The training loop: ``fit(model, data, config)``, one plain loop to read top to bottom.

What one optimizer step does (paper 3.3, and the released ``bit_pytorch/train.py``):

1. set the learning rate for this step from the schedule (warm-up, then / 10 steps);
2. draw one MixUp lambda for the whole step (when the recipe uses MixUp);
3. for each of ``batch_split`` micro-batches: mix images with a permutation of the same
   micro-batch, forward, backward of ``loss / batch_split``. Gradients add up, so the step sees
   the mean gradient of the whole batch. Under DDP the gradient all-reduce runs only on the last
   micro-batch (``no_sync`` on the others): one all-reduce per step, not per micro-batch;
4. optionally pull the weights towards their initial values (random search, supplementary A);
5. one SGD step (momentum 0.9; weight decay only upstream).

Because GroupNorm + Weight Standardization use no batch statistics (paper 4.3), 1 process with
batch B, 2 processes with B/2 each, and 1 process with 4 micro-batches of B/4 compute the same
update; tests/test_distributed.py checks it.

The file follows ``fit``: the loop first (set up; per step: optimizer step, then at sync points
log, evaluate, checkpoint; end), then its parts in the order it calls them, one section each:
setting up (data checks, model, optimizer, resume, DDP), the batches (map-style data or a
stream), one optimizer step, sync points, checkpoints, the end of a run; then ``evaluate``.

Everything around the loop (logging, progress bars, live plots, stop buttons) is an observer of
:mod:`bitkit.events`; checkpoints and preemption live in :mod:`bitkit.checkpoint`; process groups
and data sharding in :mod:`bitkit.distributed`. A YAML run file (:mod:`bitkit.runfile`) runs
with ``bitkit train --config run.yaml``, under torchrun as ``torchrun ... -m bitkit train ...``.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from bitkit import checkpoint, distributed, inputs
from bitkit.data.corrupt import CorruptReport, UnreadableImagesWarning, flag_holder
from bitkit.distributed import DistInfo, StepSampler
from bitkit.evaluate import Accumulator, to_model_input
from bitkit.events import Event, JsonlLogger, Observer, ProgressBar, RunControl
from bitkit.hyperrule import Recipe, Schedule

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
#: A folder here makes every ``fit`` also write TensorBoard event files, into
#: ``<folder>/<out_dir's name>`` (or ``<folder>/<time>-<n>`` for a run without ``out_dir``):
#: ``bitkit run NOTEBOOK --tensorboard DIR`` sets it for a lesson's kernel, so a papermill job
#: on a GPU node can be followed in TensorBoard without editing the notebook.
TENSORBOARD_ENV = "BITKIT_TENSORBOARD"
_unnamed_runs = itertools.count()
LossKind = Literal["auto", "softmax", "sigmoid"]

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that decides how a run trains. Build one from a recipe with :meth:`from_recipe`.

    Fields after ``loss`` change *how* it runs (speed, logging), not *what* it computes, so a
    checkpoint can be resumed with different values of them.
    """

    schedule: Schedule
    batch_size: int = 512
    batch_split: int = 1  # micro-batches per step; exact for GroupNorm (paper 4.3)
    mixup_alpha: float = 0.0  # 0: no MixUp. HyperRule: 0.1 for n >= 20k (paper 3.3)
    weight_decay: float = 0.0  # upstream 1e-4 (paper 4.2); none downstream (paper 2.2)
    decay_to_init: float = 0.0  # L2 pull towards the initial weights (supplementary A)
    dropout: float | None = None  # penultimate-layer dropout; None leaves the model's own
    momentum: float = 0.9
    seed: int = 0
    loss: LossKind = "auto"  # auto: sigmoid CE for multi-hot float targets, else softmax CE
    eval_every: int = 0  # steps between evaluations (0: only at the end)
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end)
    log_every: int = 1  # steps between step events; each one waits for the device
    eval_batch_size: int | None = None  # per process; default: the per-process micro-batch
    device: str = "auto"
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = False
    compile: bool = False
    num_workers: int | None = None  # None: 0 on CPU, up to 8 per GPU process
    progress: bool = True
    resume: bool = True  # continue from out_dir/checkpoint.pt when it exists

    def __post_init__(self) -> None:
        # The same rules check a run file's `train:` section (bitkit.runfile), so a mistake
        # reads the same in Python and in YAML: "field 'batch_size': expected a whole number".
        checked = inputs.check({f.name: getattr(self, f.name) for f in fields(self)},
                               inputs.fields(self.rules()), source="TrainConfig")
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if self.batch_size % self.batch_split:
            raise inputs.InputError(f"TrainConfig: batch_size {self.batch_size} must be a positive "
                                    f"multiple of batch_split {self.batch_split}")

    @classmethod
    def rules(cls) -> dict[str, inputs.Rule]:
        """Field -> rule (bitkit.inputs): the type hints, with the ranges that can work."""
        rules = inputs.rules_from_hints(cls)
        whole, non_negative = inputs.integer, inputs.number(0)
        rules.update(
            batch_size=whole(1), batch_split=whole(1), mixup_alpha=non_negative,
            weight_decay=non_negative, decay_to_init=non_negative,
            dropout=inputs.optional(inputs.number(0, below=1)), momentum=inputs.number(0, 1),
            seed=whole(0), eval_every=whole(0), checkpoint_every=whole(0), log_every=whole(1),
            eval_batch_size=inputs.optional(whole(1)), num_workers=inputs.optional(whole(0)),
        )
        return rules

    @classmethod
    def from_recipe(cls, recipe: Recipe, **overrides: Any) -> TrainConfig:
        """The recipe's numbers, with ``overrides`` (any field) on top."""
        values = dict(schedule=recipe.schedule, batch_size=recipe.batch_size,
                      batch_split=recipe.batch_split, mixup_alpha=recipe.mixup_alpha,
                      weight_decay=recipe.weight_decay, decay_to_init=recipe.decay_to_init,
                      dropout=recipe.dropout or None, momentum=recipe.momentum)
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(f.name for f in fields(cls))}")
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schedule"] = self.schedule.to_dict()
        return d

    def identity(self) -> dict[str, Any]:
        """The fields that decide the weights a run ends with (compared when resuming).

        ``batch_split`` is not among them: with GroupNorm a different split gives the same
        update, so a run may resume with smaller micro-batches on a smaller GPU.
        """
        keep = ("schedule", "batch_size", "mixup_alpha", "weight_decay", "decay_to_init",
                "dropout", "momentum", "seed", "loss")
        d = self.to_dict()
        return {k: d[k] for k in keep}


@dataclass
class FitResult:
    """How a run ended: the step reached, why it ended, and the last metrics."""

    step: int
    reason: str
    train_loss: float | None = None
    eval: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    #: Unreadable training images skipped (and replaced) during the run; None when the data
    #: cannot have any (see ``bitkit.data.corrupt``).
    corrupt: CorruptReport | None = None


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------------------
# Losses and MixUp
# ------------------------------------------------------------------------------------------------


def classification_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over the batch of softmax CE (class indices) or sigmoid CE (multi-hot targets).

    Sigmoid CE sums over classes, as for BiT's multi-label upstream data (ImageNet-21k, JFT;
    paper 3.3), so each example's loss has the scale of a softmax CE.
    """
    logits = logits.float()
    if kind == "sigmoid":
        return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="sum") / len(
            logits)
    return F.cross_entropy(logits, target)


def mixup_lambda(alpha: float, seed: int, step: int) -> float:
    """MixUp's lambda ~ Beta(alpha, alpha), one per optimizer step, fixed by (seed, step).

    A function of the step (not of a running RNG) so every rank and every micro-batch of the
    step uses the same lambda, and a resumed run draws the same ones.
    """
    return float(np.random.default_rng([seed, step, 0x6D1]).beta(alpha, alpha))


def mixup_permutation(n: int, seed: int, step: int, rank: int, micro: int) -> torch.Tensor:
    """Partner of each example: MixUp pairs images within the same micro-batch, like the release."""
    return torch.from_numpy(np.random.default_rng([seed, step, rank, micro]).permutation(n))


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    train_data: Dataset,
    config: TrainConfig,
    *,
    eval_data: Dataset | None = None,
    out_dir: str | os.PathLike | None = None,
    observers: Sequence[Observer] = (),
    control: RunControl | None = None,
) -> FitResult:
    """Train ``model`` on ``train_data`` (items: ``(image 3xHxW float, target)``).

    ``out_dir`` receives ``checkpoint.pt`` and ``metrics.jsonl``; when it already holds a
    checkpoint of the same run, training continues from it. ``observers`` get every
    :class:`~bitkit.events.Event` (on rank 0 only). ``control.request_stop()`` (or SIGTERM /
    SIGUSR1) ends the run cleanly after the current step, with a checkpoint. A NaN or infinite
    loss raises :class:`TrainingDiverged` and leaves the last good checkpoint in place.
    Global RNGs are seeded from ``config.seed``: the same seed and config give the same weights
    on CPU. Under ``torchrun`` this process trains its share of each batch with DDP.

    ``train_data`` may also be a stream (a ``torch.utils.data.IterableDataset``, e.g.
    ``preprocess_stream(ShardStream(...))``) for data too large to index: each process reads
    its own shards in micro-batches, ``set_epoch(e)`` starts each epoch, and a run resumes at
    the next epoch's fresh shuffle rather than exactly (see "Streams" below).
    """
    info = distributed.init()
    device = distributed.device_for(info, config.device)
    control = control or RunControl()
    total = config.schedule.total_steps
    loss_kind = _check_and_shard_data(train_data, eval_data, config, info, device)
    run = _set_up(model, train_data, config, out_dir, info, device)
    batches = _TrainBatches(train_data, config, run)
    if batches.streaming and run.start < total:  # a stream's first batch decides 'auto'
        loss_kind = batches.check_first(config.loss)
    emit = _Emitter(_observers(run.out, config, observers) if info.is_main else [], control,
                    total)
    emit("start", run.start)

    result = FitResult(step=run.start, reason="done")
    meter = _LossMeter(device, run.start)
    model.train()
    try:
        with checkpoint.preemption_handler(control):
            for step in range(run.start, total):
                lr = _optimizer_step(run, batches, step, config, loss_kind, meter.loss_sum)
                meter.steps += 1
                done = step + 1
                last = done == total
                eval_now = eval_data is not None and (last or _every(config.eval_every, done))
                checkpoint_now = last or _every(config.checkpoint_every, done)
                # Reading the loss waits for the device (and, under DDP, for every rank), so a
                # fast GPU run does it only at these sync points, not after every step. One
                # process also stops at once when asked; DDP ranks agree on it at a sync point.
                if not (_every(config.log_every, done) or eval_now or checkpoint_now
                        or (control.stop_requested and not info.is_distributed)):
                    continue
                train_loss, stop = _agree(meter.loss_sum, meter.steps, control.stop_requested,
                                          device)
                if not math.isfinite(train_loss):
                    _diverged(emit, done, lr, train_loss, run.ckpt_path)
                examples_per_s = meter.restart(done, config.batch_size)
                result.step, result.train_loss = done, train_loss
                emit("step", done, loss=train_loss, lr=lr, examples_per_s=examples_per_s)
                if eval_now:
                    result.eval = evaluate(model, eval_data, config, loss_kind, device, info)
                    emit("eval", done, **result.eval)
                if not info.is_distributed:  # one process: an observer's request counts at once
                    stop = control.stop_requested
                if checkpoint_now or stop:
                    result.checkpoint = _save_checkpoint(run, batches, done, config, emit)
                if stop:
                    result.reason = f"stopped: {control.reason or 'requested on another rank'}"
                    break
    except KeyboardInterrupt:
        # A Jupyter "interrupt kernel" (or Ctrl-C): observers still get an end event, so the
        # progress bar closes and live monitors stop, then the interrupt goes on up. No
        # checkpoint: the step in flight is half done; the last periodic one is kept.
        emit("end", result.step, reason="interrupted")
        raise

    if result.step == total and run.start == total:
        result.reason = "done (the checkpoint was already at the last step)"
    result.corrupt = _unreadable_images(train_data, (result.step - run.start) * config.batch_size,
                                        info, device)
    skipped = {}
    if result.corrupt is not None:
        skipped = {"corrupt_skipped": result.corrupt.count, "corrupt_ids": result.corrupt.ids}
    emit("end", result.step, reason=result.reason, **skipped)
    if result.corrupt is not None and result.corrupt.count and info.is_main:
        # one category for every "left out unreadable images" message, so users filter one
        warnings.warn(_unreadable_message(result.corrupt, batches.streaming),
                      UnreadableImagesWarning, stacklevel=2)
    return result


# ------------------------------------------------------------------------------------------------
# Setting up: data checks, the model on its device, optimizer, resume, DDP
# ------------------------------------------------------------------------------------------------


def _check_and_shard_data(train_data: Dataset, eval_data: Dataset | None, config: TrainConfig,
                          info: DistInfo, device: torch.device) -> str:
    """Refuse data fit cannot use before any work is done; give the loss kind to train with.

    Map-style data is checked on its item 0, which also decides ``loss='auto'``. Reading it
    stays before the global RNGs are seeded: after, it would shift the random numbers that
    dropout and a dataset's own augmentation draw, and with them every same-seed result. A
    stream cannot be indexed: here it is only pointed at this rank's shards; its first batch is
    checked (and decides 'auto') once its loader exists (:meth:`_TrainBatches.check_first`).
    """
    if isinstance(eval_data, IterableDataset):
        raise ValueError("eval_data must be a map-style dataset (len and indexing: a held-out "
                         "split, every example once); streams are for training data")
    if isinstance(train_data, IterableDataset):
        _shard_stream(train_data, info, _workers(config, device))
        return config.loss
    return _check_data(train_data, config.loss)


@dataclass
class _Run:
    """What the loop trains with, as :func:`_set_up` prepared it."""

    info: DistInfo
    device: torch.device
    model: nn.Module  # the module itself: what checkpoints save and evaluation runs
    net: nn.Module  # what the training forward calls: model or its DDP wrapper, maybe compiled
    ddp: DistributedDataParallel | None  # None in one process; no_sync() on accumulation micro-batches
    optimizer: torch.optim.Optimizer
    trainable: list[nn.Parameter]  # requires_grad parameters: those decay_to_init pulls
    anchor: list[torch.Tensor]  # their initial values (decay_to_init > 0; else empty)
    autocast: Any  # the bf16 autocast context (or a no-op), entered for every micro-batch
    out: Path | None
    ckpt_path: Path | None
    identity: dict[str, Any]  # what this run is: a checkpoint must match it to be resumed
    start: int  # the first step to train: 0, or the resumed checkpoint's step
    saved_data: dict[str, Any] | None  # the resumed checkpoint's data position


def _set_up(model: nn.Module, train_data: Dataset, config: TrainConfig,
            out_dir: str | os.PathLike | None, info: DistInfo, device: torch.device) -> _Run:
    """Model on its device, SGD, resume from ``out_dir`` (else seed the RNGs), DDP wrap."""
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.dropout is not None:
        _penultimate_dropout(model).p = config.dropout
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    # Decay towards the initial weights pulls only what trains: frozen parameters (requires_grad
    # False, e.g. a frozen backbone) have no gradient to add the pull to and never move anyway.
    trainable = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in trainable] if config.decay_to_init else []

    # Resume when out_dir holds a checkpoint of this run, else start fresh.
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_FILE if out is not None else None
    identity = _identity(model, config, _data_size(train_data))
    start, saved_data = 0, None
    if ckpt_path is not None and config.resume and ckpt_path.exists():
        start, saved_data = _resume(ckpt_path, identity, model, optimizer, anchor, info,
                                    config.seed)
    else:
        _seed_globals(config.seed, info.rank, step=0)

    # DDP wraps the starting weights, initial or loaded (its constructor broadcasts rank 0's to
    # every rank); checkpoints save the plain module's state_dict, without DDP's 'module.'.
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                  else None) if info.is_distributed else None
    net: nn.Module = ddp or model
    if config.compile:
        net = torch.compile(net)
    return _Run(info=info, device=device, model=model, net=net, ddp=ddp, optimizer=optimizer,
                trainable=trainable, anchor=anchor, autocast=_autocast(device, config.bf16),
                out=out, ckpt_path=ckpt_path, identity=identity, start=start,
                saved_data=saved_data)


def _identity(model: nn.Module, config: TrainConfig, dataset_size: int | str) -> dict[str, Any]:
    """What this run *is*: compared with a checkpoint's before resuming from it."""
    name = getattr(model, "name", type(model).__name__)
    return {"model": name, "parameters": checkpoint.parameter_shapes(model),
            "dataset_size": dataset_size, **config.identity()}


def _resume(path: Path, identity: dict[str, Any], model: nn.Module,
            optimizer: torch.optim.Optimizer, anchor: list[torch.Tensor], info: DistInfo,
            seed: int) -> tuple[int, dict[str, Any]]:
    """Load a checkpoint of this run: weights, momentum, anchor and RNG states; give its step
    and data position."""
    state = checkpoint.load(path)
    checkpoint.check_compatible(state["identity"], identity, path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for a, saved in zip(anchor, state["anchor"], strict=True):
        a.copy_(saved)
    step = int(state["step"])
    if len(state["rng"]) == info.world_size:
        checkpoint.set_rng_state(state["rng"][info.rank])
    else:
        # Data order and gradients do not depend on the world size (StepSampler, GroupNorm);
        # only dropout randomness cannot be carried over rank by rank (bitkit's augmentation
        # is a function of the batch's indices, see bitkit.data.transforms.Preprocessed).
        _seed_globals(seed, info.rank, step)
        if info.is_main:  # nothing to do about it: the run goes on, only the masks differ
            logger.info("resuming with %d processes from a checkpoint of %d: dropout randomness "
                        "is reseeded", info.world_size, len(state["rng"]))
    return step, state.get("data") or {}


# ------------------------------------------------------------------------------------------------
# Batches: map-style data or a stream
# ------------------------------------------------------------------------------------------------


class _TrainBatches:
    """This process's micro-batches, step after step, from map-style data or from a stream.

    The loop takes ``next()`` micro-batches without knowing which it is; :meth:`state` is the
    data position a checkpoint records. Map-style data goes through :class:`StepSampler`
    (each step's examples are a function of (seed, step): an exact resume); a stream is read in
    micro-batches epoch after epoch (see "Streams" below: a resume starts the next epoch).
    """

    def __init__(self, data: Dataset, config: TrainConfig, run: _Run) -> None:
        self.streaming = isinstance(data, IterableDataset)
        self._position: _StreamPosition | None = None
        self._sampler: StepSampler | None = None
        if self.streaming:
            self._position = _StreamPosition.resumed(run.saved_data, run.info)
            micro = _micro_batch(config, run.info)
            loader = _loader(data, config, run.device, batch_size=micro, drop_last=True)
            self._batches = _stream_batches(data, loader, self._position, micro, run.info)
        else:
            self._sampler = StepSampler(len(data), config.batch_size, config.schedule.total_steps,
                                        seed=config.seed, start_step=run.start,
                                        rank=run.info.rank, world_size=run.info.world_size,
                                        batch_split=config.batch_split)
            self._batches = iter(_loader(data, config, run.device, batch_sampler=self._sampler,
                                         persistent_workers=config.num_workers != 0))

    def __iter__(self) -> _TrainBatches:
        return self

    def __next__(self) -> Any:
        return next(self._batches)

    def check_first(self, loss: str) -> str:
        """Check a stream's first micro-batch and give the loss kind; it is still trained on."""
        try:
            first = next(self._batches)
        except TypeError as e:  # default_collate on PIL images: a raw, unprocessed stream
            raise ValueError(f"fit could not batch the stream's items ({e}). Wrap a raw "
                             "stream with bitkit.data.transforms.preprocess_stream (3xHxW "
                             "tensors in [-1, 1]).") from None
        loss_kind = _check_stream_batch(first, loss)
        self._batches = _chain(first, self._batches)
        return loss_kind

    def state(self, step: int) -> dict[str, Any]:
        """The data position at ``step`` for a checkpoint. Every rank must call it: a stream's
        positions are gathered from all ranks."""
        if self._position is not None:
            return self._position.state()
        return {**self._sampler.state_dict(), "step": step}


# ------------------------------------------------------------------------------------------------
# One optimizer step
# ------------------------------------------------------------------------------------------------


def _optimizer_step(run: _Run, batches: _TrainBatches, step: int, config: TrainConfig,
                    loss_kind: str, loss_sum: torch.Tensor) -> float:
    """Optimizer step ``step`` (1-5 of the module docstring) on ``batch_split`` micro-batches
    from ``batches``. Adds the step's loss to ``loss_sum`` in place, on the device (reading it
    would wait for the device), and returns the step's learning rate."""
    lr = config.schedule.lr(step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    mixing = config.mixup_alpha > 0
    lam = mixup_lambda(config.mixup_alpha, config.seed, step) if mixing else 1.0
    split = config.batch_split

    for micro in range(split):
        # Each micro-batch is loaded just before its forward pass, not all up front: one in
        # memory at a time, and a dataset that draws from the global RNG (augmentation) shares
        # it with dropout in this interleaved order, which same-seed results depend on.
        x, y = next(batches)
        x, y = _to_device(x, y, run.device, config.channels_last)
        # Gradients of micro-batches accumulate locally; DDP syncs on the last one only.
        sync = run.ddp is None or micro == split - 1
        with nullcontext() if sync else run.ddp.no_sync():
            with run.autocast:
                if mixing:  # mix each image with a partner from the same micro-batch
                    perm = mixup_permutation(len(x), config.seed, step, run.info.rank,
                                             micro).to(run.device)
                    x = lam * x + (1 - lam) * x[perm]
                logits = run.net(x)
                if step == run.start and micro == 0:  # labels that do not fit the head
                    _check_targets(logits, y, loss_kind)
                loss = classification_loss(logits, y, loss_kind)
                if mixing:
                    loss = lam * loss + (1 - lam) * classification_loss(logits, y[perm],
                                                                        loss_kind)
            (loss / split).backward()
        loss_sum += loss.detach() / split

    if config.decay_to_init:  # gradient of decay/2 * ||w - w0||^2 (supplementary A)
        for p, p0 in zip(run.trainable, run.anchor, strict=True):
            if p.grad is not None:  # unused this step: SGD skips it too (as for wd)
                p.grad.add_(p.detach() - p0, alpha=config.decay_to_init)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return lr


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:  # raw pixels: BiT's scaling, as predict/evaluate do
        x = x.float().div_(127.5).sub_(1.0)
    y = y.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _check_targets(logits: torch.Tensor, y: torch.Tensor, loss_kind: str) -> None:
    classes = logits.shape[1]
    if loss_kind == "softmax" and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"labels of the first batch range over {int(y.min())}..{int(y.max())} "
                         f"but the model has {classes} outputs; create the model with "
                         "num_classes = the number of classes (or model.reset_head(n))")
    if loss_kind == "sigmoid" and y.shape[1] != classes:
        raise ValueError(f"multi-hot targets have {y.shape[1]} classes but the model has "
                         f"{classes} outputs; use model.reset_head({y.shape[1]})")


# ------------------------------------------------------------------------------------------------
# Sync points: the loss, the stop decision, divergence
# ------------------------------------------------------------------------------------------------


def _every(n: int, step: int) -> bool:
    """Whether ``step`` is a multiple of ``n`` (``n = 0``: never; the end is handled apart)."""
    return n > 0 and step % n == 0


class _LossMeter:
    """The training loss (summed on the device) and the throughput since the last sync point."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.loss_sum, self.steps = torch.zeros((), device=device), 0
        self.since, self.since_step = time.perf_counter(), step

    def restart(self, step: int, batch_size: int) -> float:
        """Start the next interval at ``step``; give the examples per second of the last one."""
        now = time.perf_counter()
        rate = (step - self.since_step) * batch_size / max(now - self.since, 1e-9)
        self.loss_sum.zero_()
        self.steps, self.since, self.since_step = 0, now, step
        return rate


def _agree(loss_sum: torch.Tensor, steps: int, stop: bool,
           device: torch.device) -> tuple[float, bool]:
    """Mean loss over ranks and steps since the last sync, and whether any rank must stop.

    All ranks must stop at the same step (else the others wait forever in the next all-reduce),
    and SIGTERM reaches ranks at slightly different times: so the decision is a sum over ranks.
    """
    t = torch.stack([loss_sum.float(), torch.tensor(float(steps), device=device),
                     torch.tensor(float(stop), device=device)])
    world = distributed.all_reduce_sum(t).tolist()
    return world[0] / world[1], world[2] > 0


def _diverged(emit: _Emitter, step: int, lr: float, loss: float, ckpt: Path | None) -> None:
    kept = (f"The last good checkpoint is kept at {ckpt}." if ckpt and ckpt.exists()
            else "No checkpoint was written before it.")
    message = (f"training diverged: the loss is {loss} at step {step} (lr {lr:.3g}). {kept} "
               "Lower the learning rate, or check the data for NaN/inf pixels or bad targets.")
    emit("end", step, reason=f"diverged: loss {loss}")
    raise TrainingDiverged(message)


# ------------------------------------------------------------------------------------------------
# Checkpoints (the file format and preemption: bitkit.checkpoint)
# ------------------------------------------------------------------------------------------------


def _save_checkpoint(run: _Run, batches: _TrainBatches, step: int, config: TrainConfig,
                     emit: _Emitter) -> Path | None:
    """Write ``out_dir/checkpoint.pt`` at ``step`` and announce it; None without an out_dir.

    Every rank must call it: the data position and RNG states are gathered from all ranks, and
    only rank 0 writes.
    """
    if run.ckpt_path is None:
        return None
    data_state = batches.state(step)
    rng = distributed.all_gather(checkpoint.rng_state())  # every rank's dropout/augment RNG
    if run.info.is_main:
        checkpoint.save(run.ckpt_path, {
            "step": step, "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "anchor": run.anchor, "rng": rng,
            "data": {**data_state, "step": step}, "config": config.to_dict(),
            "identity": run.identity,
        })
    distributed.barrier()  # nobody runs ahead (or exits) before the file is complete
    emit("checkpoint", step, path=str(run.ckpt_path))
    return run.ckpt_path


# ------------------------------------------------------------------------------------------------
# The end of a run: unreadable training images (bitkit.data.corrupt)
# ------------------------------------------------------------------------------------------------


def _unreadable_images(data: Dataset, examples: int, info: DistInfo,
                       device: torch.device) -> CorruptReport | None:
    """The run's report of skipped unreadable training images (None: data without any);
    ``examples``: how many this run trained on (a stream's total)."""
    if isinstance(data, IterableDataset):
        return _stream_corrupt_report(data, examples, device)
    return _corrupt_report(data, info, device)


def _unreadable_message(report: CorruptReport, streaming: bool) -> str:
    """What was skipped, what the run did instead, and how to train without (or on) them."""
    if streaming:
        done = ("Unreadable records were dropped where they were read. To train on them, "
                "re-create the affected shards from the source (bitkit.data.streaming."
                "write_shards).")
    else:
        done = ("Each was replaced in its batch by the next readable example, with that "
                "example's own label. To train without them, repair or remove those files, or "
                "call scan() and then without_corrupt() on the loaded dataset and train on that.")
    return f"fit: training data: {report}. {done}"


def _stream_corrupt_report(stream: IterableDataset, examples: int,
                           device: torch.device) -> CorruptReport | None:
    """A stream's unreadable records (``skipped()``) and shards it could not read to the end
    (``broken_shards()``, tar shards only), summed over ranks. Streamed records are dropped
    where they are read, so there are no ids to list, only the counts."""
    counter = getattr(stream, "skipped", None)
    if counter is None:
        return None
    broken = getattr(stream, "broken_shards", None)
    local = torch.tensor([float(counter()), float(broken() if broken else 0)], device=device)
    count, shards = (int(v) for v in distributed.all_reduce_sum(local).tolist())
    return CorruptReport(count=count, ids=[], total=examples + count, broken_shards=shards)


def _corrupt_report(data: Dataset, info: DistInfo, device: torch.device,
                    limit: int = 20) -> CorruptReport | None:
    """The training data's skipped-unreadable-images report (``bitkit.data.corrupt``), or None
    for data that cannot have unreadable images.

    The flags live in the dataset under the wrappers (``corrupt.flag_holder``). Under DDP each
    rank's loader flags what *it* loaded, so the flags are OR-ed over ranks first (one
    all-reduce of n bytes at the end of the run).
    """
    lookup = flag_holder(data)
    report = getattr(data, "corrupt_report", None)
    if lookup is None and report is None:
        return None
    if lookup is not None and info.is_distributed:
        flags = lookup.holder.corrupt.flags
        seen = distributed.all_reduce_sum(flags.to(device=device, dtype=torch.int32))
        flags |= (seen > 0).cpu()
    try:
        return report(limit) if report is not None else lookup.holder.corrupt_report(limit)
    except AttributeError:  # a wrapper over data that never has unreadable images
        return None


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, config: TrainConfig, loss_kind: str,
             device: torch.device, info: DistInfo | None = None) -> dict[str, float]:
    """Mean loss, top-1 and top-5 accuracy (fractions in [0, 1]) on ``data``.

    The numbers come from :class:`bitkit.evaluate.Accumulator`, the same scoring as
    ``evaluate.predict``'s :class:`~bitkit.evaluate.Report`, so a run's last eval and a report
    on the same data agree. Under DDP each rank scores its shard and the sums are all-reduced.
    Images may be float in [-1, 1] or raw ``uint8`` (scaled like ``predict`` does). Multi-hot
    targets: top-k counts an example right when any of its labels is in the top k; top-5 is
    left out with 5 classes or fewer (it would always be 1). ``loss_kind`` is only checked
    against the targets: the target shape decides the loss, as in ``classification_loss``.
    Unreadable images (``bitkit.data.corrupt``) are left out, as ``predict`` does.
    """
    info = info or distributed.env_info()
    shard = Subset(data, distributed.shard_indices(len(data), info))
    batch = config.eval_batch_size or max(
        1, config.batch_size // (config.batch_split * info.world_size))
    loader = _loader(shard, config, device, batch_size=batch)
    was_training = model.training
    model.eval()
    acc = Accumulator(device)
    dtype = next(model.parameters()).dtype
    unreadable = flag_holder(shard)  # file-backed data: which examples could not be decoded
    offset = 0
    try:
        for x, y in loader:
            if unreadable is not None:  # an unreadable one arrived as its neighbour: not scored
                ok = torch.from_numpy(~unreadable(slice(offset, offset + len(y))))
                offset += len(y)
                if not ok.all():
                    x, y = x[ok], y[ok]
                if len(y) == 0:
                    continue
            x = to_model_input(x, device, dtype)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, config.bf16):
                logits = model(x).float()
            if loss_kind == "sigmoid" and y.dim() != 2:
                raise ValueError("the training data has multi-hot targets but the eval data "
                                 f"gives class ids (shape {tuple(y.shape)}); use the same kind")
            try:
                acc.add(logits, y.to(device, non_blocking=True))
            except ValueError as e:  # labels that do not fit the head: name the dataset
                raise ValueError(f"eval_data: {e}") from None
    finally:
        model.train(was_training)
    distributed.all_reduce_sum(acc.totals)
    return acc.metrics()


# ------------------------------------------------------------------------------------------------
# Shared by training and evaluation: events, loaders, seeds, data checks
# ------------------------------------------------------------------------------------------------


class _Emitter:
    """Builds events and hands them to the observers."""

    def __init__(self, observers: list[Observer], control: RunControl, total: int) -> None:
        self.observers, self.control, self.total = observers, control, total

    def __call__(self, kind: str, step: int, *, path: str | None = None,
                 reason: str | None = None, **metrics: float) -> None:
        if not self.observers:
            return
        event = Event(kind, step, self.total, metrics, path, reason, control=self.control)
        for observer in self.observers:
            observer(event)


def _observers(out: Path | None, config: TrainConfig, extra: Sequence[Observer]) -> list[Observer]:
    built_in: list[Observer] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        built_in.append(JsonlLogger(out / METRICS_FILE))
    if config.progress:
        built_in.append(ProgressBar())
    if os.environ.get(TENSORBOARD_ENV):
        from bitkit.events import TensorBoardLogger

        name = out.name if out is not None else (
            f"{time.strftime('%Y%m%d-%H%M%S')}-{next(_unnamed_runs)}")
        built_in.append(TensorBoardLogger(Path(os.environ[TENSORBOARD_ENV]) / name, config))
    return [*built_in, *extra]


def _workers(config: TrainConfig, device: torch.device) -> int:
    if config.num_workers is not None:
        return config.num_workers
    return 0 if device.type == "cpu" else min(8, (os.cpu_count() or 1) // max(
        1, torch.cuda.device_count()))


def _loader(data: Dataset, config: TrainConfig, device: torch.device, **kwargs: Any) -> DataLoader:
    workers = _workers(config, device)
    # An explicit generator keeps DataLoader from drawing its worker seed from the global RNG,
    # whose state the checkpoint restores: creating a loader must not shift dropout masks.
    # Workers therefore start from the same RNG state on every rank and after every resume:
    # random augmentation must not come from it. bitkit's Preprocessed seeds each batch's crops
    # from its index list instead (bitkit.data.transforms), which differs per step and rank.
    if workers == 0:
        kwargs.pop("persistent_workers", None)
    return DataLoader(data, num_workers=workers, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(config.seed), **kwargs)


def _autocast(device: torch.device, bf16: bool):  # noqa: ANN202 - a context manager
    """bf16 autocast on GPUs that support it; on CPU training stays float32."""
    on = bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast("cuda", dtype=torch.bfloat16) if on else nullcontext()


def _seed_globals(seed: int, rank: int, step: int) -> None:
    """Seed torch, NumPy and Python RNGs (dropout, random augmentation) per rank."""
    s = int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def _penultimate_dropout(model: nn.Module) -> nn.Dropout:
    drop = getattr(model, "dropout", None)
    if not isinstance(drop, nn.Dropout):
        raise ValueError(f"config.dropout is set but {type(model).__name__} has no `dropout` "
                         "(nn.Dropout) before its head; use a bitkit.models model or dropout=None")
    return drop


def _check_data(data: Dataset, loss: str) -> str:
    """Check the dataset's items early and pick the loss for ``loss='auto'``."""
    if len(data) == 0:
        raise ValueError("the training dataset is empty")
    item = data[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and torch.is_tensor(item[0])
            and item[0].dim() == 3 and item[0].shape[0] == 3):
        got = (type(item).__name__ if not isinstance(item, (tuple, list))
               else f"({', '.join(getattr(v, 'shape', type(v).__name__).__repr__() for v in item)})")
        raise ValueError(f"fit needs dataset items (image tensor 3xHxW, target); item 0 is {got}. "
                         "Apply bitkit.data transforms (they give 3xHxW tensors in [-1, 1]).")
    if loss != "auto":
        return loss
    target = item[1]
    multi_hot = torch.is_tensor(target) and target.is_floating_point() and target.dim() == 1
    return "sigmoid" if multi_hot else "softmax"


# ------------------------------------------------------------------------------------------------
# Streams (IterableDataset): ShardStream, HFStream, preprocess_stream
# ------------------------------------------------------------------------------------------------
#
# A stream has no length and no random access, so StepSampler cannot pick each step's examples.
# Instead each rank reads its own part of the stream (its shards) in micro-batches, epoch after
# epoch: set_epoch(e) gives a new shard order and buffer shuffle, and the loop restarts the
# stream when an epoch runs out. Ranks need not agree on epochs (their shards may differ in
# size); they only agree on steps. A checkpoint records each rank's epoch and the micro-batches
# consumed in it. Resuming starts the *next* epoch, a fresh shuffle, instead of replaying the
# interrupted one: re-reading (and decoding) everything up to the stop point is what an exact
# resume would cost, and an upstream-scale epoch is hours. So a map-style dataset resumes
# exactly (the same examples as an uninterrupted run), a stream resumes at a new shuffle and
# skips the rest of the interrupted epoch's examples (the standard WebDataset behaviour; at
# upstream scale, one partial epoch of many is noise).


class _StreamPosition:
    """Where this rank is in its stream: the epoch and the micro-batches consumed in it."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch, self.batches = epoch, 0
        self.ranks: list[tuple[int, int]] = []

    @classmethod
    def resumed(cls, saved: dict[str, Any] | None, info: DistInfo) -> _StreamPosition:
        """Start of a run: epoch 0, or after a checkpoint the epoch after this rank's last one
        (all ranks take the epoch after the latest one when the world size changed)."""
        if not saved or "stream_epochs" not in saved:
            return cls(0)
        epochs, used = saved["stream_epochs"], saved["stream_batches"]
        if len(epochs) == info.world_size:
            return cls(int(epochs[info.rank]) + (1 if used[info.rank] else 0))
        return cls(max(int(e) + (1 if u else 0) for e, u in zip(epochs, used, strict=True)))

    def state(self) -> dict[str, Any]:
        gathered = distributed.all_gather((self.epoch, self.batches))
        return {"stream_epochs": [int(e) for e, _ in gathered],
                "stream_batches": [int(b) for _, b in gathered]}


def _micro_batch(config: TrainConfig, info: DistInfo) -> int:
    parts = info.world_size * config.batch_split
    if config.batch_size % parts:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by world_size x "
                         f"batch_split = {info.world_size} x {config.batch_split}: every process "
                         "and micro-batch gets an equal share")
    return config.batch_size // parts


def _shard_stream(stream: IterableDataset, info: DistInfo, workers: int) -> None:
    """Make the stream read this rank's part: set its rank/world_size from the process group."""
    if hasattr(stream, "rank") and hasattr(stream, "world_size"):
        if (stream.rank, stream.world_size) != (info.rank, info.world_size):
            stream.rank, stream.world_size = info.rank, info.world_size
    elif info.is_distributed:
        raise ValueError(
            f"{type(stream).__name__} cannot be sharded across the {info.world_size} processes: "
            "it has no rank/world_size attributes, so every process would train on the same "
            "examples. Use bitkit.data.streaming.ShardStream or HFStream, or give the stream "
            "rank and world_size attributes that it reads when iterated.")
    check = getattr(stream, "check_readers", None)
    if check is not None:
        check(workers)


def _stream_batches(stream: IterableDataset, loader: DataLoader, position: _StreamPosition,
                    micro: int, info: DistInfo) -> Iterator[Any]:
    """Micro-batches forever: each epoch with ``set_epoch(epoch)``, restarted when exhausted."""
    while True:
        if hasattr(stream, "set_epoch"):
            stream.set_epoch(position.epoch)  # before iter(): workers copy the stream then
        position.batches = 0
        for batch in loader:
            position.batches += 1
            yield batch
        if position.batches == 0:
            skipped = getattr(stream, "skipped", None)
            raise ValueError(
                f"the training stream gave no micro-batch of {micro} examples in epoch "
                f"{position.epoch} (rank {info.rank}): it holds fewer examples per process "
                f"than a micro-batch" + (f", or all were unreadable ({skipped()} skipped)"
                                         if skipped is not None else "") + ".")
        position.epoch += 1


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _check_stream_batch(batch: Any, loss: str) -> str:
    """Check a stream's first micro-batch (a stream cannot be indexed) and pick the loss."""
    x, y = batch if isinstance(batch, (tuple, list)) and len(batch) == 2 else (batch, None)
    if not (torch.is_tensor(x) and x.dim() == 4 and x.shape[1] == 3 and torch.is_tensor(y)):
        got = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"fit needs stream items (image tensor 3xHxW, target); the first "
                         f"batch holds {got!r}. Wrap a raw stream with "
                         "bitkit.data.transforms.preprocess_stream (3xHxW tensors in [-1, 1]).")
    if loss != "auto":
        return loss
    return "sigmoid" if y.is_floating_point() and y.dim() == 2 else "softmax"


def _data_size(data: Dataset) -> int | str:
    """The dataset's size for the run identity; a stream has none, so its shard count."""
    if not isinstance(data, IterableDataset):
        return len(data)
    shards = getattr(data, "shards", None)
    return f"stream of {len(shards)} shards" if shards is not None else "stream"
