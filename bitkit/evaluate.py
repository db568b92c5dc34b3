"""Predictions and error analysis: ``predict(model, data) -> Report``.

The paper judges representations by what a transferred model gets wrong as much as by its
accuracy: supplementary C shows *all* of BiT-L's mistakes on Pets and Flowers, and many turn out
to be label noise or genuinely ambiguous images. A :class:`Report` keeps, for every test example,
its id, target, top-k predictions with probabilities, loss and (optionally) logits, so that
notebooks and the error-browsing widgets can ask the questions of that section: which classes are
confused, which mistakes are the most confident, what does class X get mistaken for.

Data contract (``bitkit.data``): a map-style ``Dataset`` (or a ``DataLoader`` over one, in dataset
order) of ``(image, target)`` where the image is a float tensor (3, H, W) in [-1, 1] after BiT
preprocessing, or a raw ``uint8`` tensor (3, H, W), which is scaled to [-1, 1] here exactly as
BiT's preprocessing does (``x / 127.5 - 1``; no resize). The target is a class id, or a multi-hot
float vector for multi-label data (ImageNet-21k, JFT: paper 3.1). Example ids come from the
dataset's ``ids`` attribute or ``example_id(i)`` method (``Subset`` is followed), else the index.
An example whose image cannot be decoded (file-backed data: ``bitkit.data.corrupt``) is left out
of the result, counted in its ``meta`` (``unreadable_skipped``, ``unreadable_ids``) and named in an
``UnreadableImagesWarning``: the loader yields a readable neighbour in its place, which must not be
scored twice.

Multi-label convention: an example is top-k correct when *any* of its k highest-scoring classes is
one of its positive labels (the "precision@1" convention used for multi-label ImageNet-21k/JFT
evaluations). For the confusion matrix and per-class accuracy each example is assigned one "true"
class: its top-1 prediction when that is a positive label, else its highest-scoring positive label
(the label the model should have ranked first); examples without any positive label count as
mistakes and are left out of the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler, Subset
from tqdm.auto import tqdm

import bitkit
from bitkit.data.corrupt import unreadable, warn_unreadable
from bitkit.fileio import load_npz, save_npz

Data = Dataset | DataLoader
ClassRef = int | str


# --------------------------------------------------------------------------------------------
# Running a model over data
# --------------------------------------------------------------------------------------------


def _as_loader(data: Data, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    if isinstance(data, DataLoader):
        sampler = data.batch_sampler.sampler if data.batch_sampler is not None else data.sampler
        if not isinstance(sampler, SequentialSampler):
            raise ValueError(
                "predict needs the examples in dataset order to attach their ids, but this "
                "DataLoader samples them in another order (shuffle=True or a custom sampler). "
                "Pass the dataset itself, or a DataLoader with shuffle=False."
            )
        return data
    if not isinstance(data, Dataset):
        raise TypeError(f"expected a torch Dataset or DataLoader, got {type(data).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda")


def dataset_of(data: Data) -> Dataset:
    """The dataset behind ``data``: a ``DataLoader``'s ``dataset``, or ``data`` itself."""
    return data.dataset if isinstance(data, DataLoader) else data


def example_ids(data: Data) -> np.ndarray:
    """Stable ids of every example, as strings: ``ids`` attribute, ``example_id(i)``, else index.

    ``torch.utils.data.Subset`` is followed to its parent so a few-shot subset keeps the ids of
    the full split (error analysis and duplicate reports refer to examples by id).
    """
    ds = dataset_of(data)
    n = len(ds)
    if isinstance(ds, Subset):
        parent = example_ids(ds.dataset)
        return parent[np.asarray(ds.indices, dtype=np.int64)]
    ids = getattr(ds, "ids", None)
    if ids is not None and not callable(ids):
        if len(ids) != n:
            raise ValueError(f"{type(ds).__name__}.ids has {len(ids)} entries for {n} examples")
        return np.asarray([str(i) for i in ids])
    if callable(getattr(ds, "example_id", None)):
        return np.asarray([str(ds.example_id(i)) for i in range(n)])
    return np.asarray([str(i) for i in range(n)])


def to_model_input(images: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A batch from the loader -> model input in [-1, 1] on the model's device and dtype."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"the data yields images of type {type(images).__name__}; expected tensors (3, H, W). "
            "Apply the BiT transforms from bitkit.data (they give float tensors in [-1, 1])."
        )
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a batch of images (B, 3, H, W); got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        # BiT's pixel scaling (the released input pipeline): [0, 255] -> [-1, 1].
        return images.to(device, non_blocking=True).to(dtype).div_(127.5).sub_(1.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point; got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(
            f"float images must be in [-1, 1] (BiT preprocessing); this batch spans [{lo:.3g}, "
            f"{hi:.3g}]. Use the bitkit.data transforms, or pass uint8 images."
        )
    return images.to(device, non_blocking=True).to(dtype)


def run_model(
    model: nn.Module,
    data: Data,
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "predict",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(fn(model, x), targets, raw_images)`` batch by batch, in dataset order.

    ``fn`` is e.g. :func:`pre_logits` (features) or ``lambda model, x: model(x)`` (logits).

    Runs without gradients in eval mode on the model's device and dtype; the model's train/eval
    mode is restored afterwards. ``raw_images`` are the images as the data gave them (used by the
    exact-hash pass of near-duplicate search).
    """
    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    loader = _as_loader(data, batch_size, num_workers, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                    raise ValueError("the data must yield (image, target) pairs")
                images, targets = batch
                yield fn(model, to_model_input(images, device, dtype)), targets, images
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything ``predict`` saw, per example, plus the analyses of supplementary C.

    Arrays are aligned on the example axis (N). ``topk`` / ``topk_prob`` hold the K best classes
    by score with their probabilities (softmax, or sigmoid for multi-label); ``label`` is the one
    "true" class used by the confusion matrix (see the module docstring for multi-label).
    """

    ids: np.ndarray  # (N,) str
    targets: np.ndarray  # (N,) int64, or (N, C) bool for multi-label
    label: np.ndarray  # (N,) int64, -1 if a multi-label example has no positive label
    topk: np.ndarray  # (N, K) int64
    topk_prob: np.ndarray  # (N, K) float32
    loss: np.ndarray  # (N,) float32
    class_names: list[str]
    multi_label: bool = False
    logits: np.ndarray | None = None  # (N, C) float32 when kept
    meta: dict[str, Any] = field(default_factory=dict)

    # -- basic facts ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def predicted(self) -> np.ndarray:
        """Top-1 predicted class of each example."""
        return self.topk[:, 0]

    @property
    def confidence(self) -> np.ndarray:
        """Probability the model gave its top-1 prediction."""
        return self.topk_prob[:, 0]

    def correct(self, k: int = 1) -> np.ndarray:
        """Boolean (N,): is a correct label among the k best predictions."""
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        kept = self.topk.shape[1]
        if k > kept:
            if kept < self.num_classes:
                raise ValueError(f"this report kept the top-{kept} predictions only; "
                                 f"run predict(..., topk={k}) for top-{k} accuracy")
            k = kept  # all classes kept: top-k for k >= C is the same as top-C
        top = self.topk[:, :k]
        if self.multi_label:
            return np.take_along_axis(self.targets, top, axis=1).any(axis=1)
        return (top == self.targets[:, None]).any(axis=1)

    def accuracy(self, k: int = 1) -> float:
        """Top-k accuracy in [0, 1] (NaN for an empty report)."""
        return float(self.correct(k).mean()) if len(self) else float("nan")

    @property
    def top1(self) -> float:
        return self.accuracy(1)

    @property
    def top5(self) -> float:
        return self.accuracy(5)

    # -- confusion -----------------------------------------------------------------------------

    def confusion_matrix(self) -> np.ndarray:
        """Counts (C, C): rows are true classes, columns top-1 predictions."""
        c = self.num_classes
        ok = self.label >= 0
        flat = self.label[ok] * c + self.predicted[ok]
        return np.bincount(flat, minlength=c * c).reshape(c, c)

    def most_confused(self, n: int = 10, min_count: int = 1) -> list[dict[str, Any]]:
        """The ``n`` largest off-diagonal cells: (true, predicted, count), most frequent first.

        Ties are broken by (true, predicted) class id so the order is stable across runs.
        """
        cm = self.confusion_matrix().copy()
        np.fill_diagonal(cm, 0)
        t, p = np.nonzero(cm >= max(min_count, 1))
        order = np.lexsort((p, t, -cm[t, p]))[:n]
        return [{"true": int(t[i]), "true_name": self.class_names[t[i]],
                 "predicted": int(p[i]), "predicted_name": self.class_names[p[i]],
                 "count": int(cm[t[i], p[i]])} for i in order]

    def most_confused_table(self, n: int = 10, min_count: int = 1) -> str:
        """:meth:`most_confused` as a plain-text table to print (true, predicted, count)."""
        pairs = self.most_confused(n, min_count)
        if not pairs:
            return "no confusions: every example is classified correctly"
        rows = [("true class", "predicted as", "count")] + [
            (p["true_name"], p["predicted_name"], str(p["count"])) for p in pairs]
        w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
        return "\n".join(f"{a:<{w0}}  {'→' if i else ' '}  {b:<{w1}}  {c:>5}"
                         for i, (a, b, c) in enumerate(rows))

    def per_class_accuracy(self) -> np.ndarray:
        """(C,) fraction of each true class predicted correctly (NaN for classes with no example)."""
        cm = self.confusion_matrix()
        total = cm.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, np.diag(cm) / np.maximum(total, 1), np.nan)

    def per_class_rows(self) -> list[dict[str, Any]]:
        cm = self.confusion_matrix()
        acc = self.per_class_accuracy()
        return [{"class": i, "name": name, "count": int(cm[i].sum()), "correct": int(cm[i, i]),
                 "accuracy": None if np.isnan(acc[i]) else float(acc[i])}
                for i, name in enumerate(self.class_names)]

    # -- browsing ------------------------------------------------------------------------------

    def class_index(self, c: ClassRef) -> int:
        """A class given by id or name -> its id."""
        if isinstance(c, (int, np.integer)):
            if not 0 <= int(c) < self.num_classes:
                raise ValueError(f"class id {c} out of range for {self.num_classes} classes")
            return int(c)
        try:
            return self.class_names.index(c)
        except ValueError:
            raise ValueError(f"unknown class name {c!r}; known: {self.class_names[:10]}"
                             f"{' ...' if self.num_classes > 10 else ''}") from None

    def indices(self, *, true: ClassRef | None = None, predicted: ClassRef | None = None,
                correct: bool | None = None) -> np.ndarray:
        """Example indices filtered by true class, predicted class and/or correctness."""
        keep = np.ones(len(self), bool)
        if true is not None:
            keep &= self.label == self.class_index(true)
        if predicted is not None:
            keep &= self.predicted == self.class_index(predicted)
        if correct is not None:
            keep &= self.correct(1) == bool(correct)
        return np.nonzero(keep)[0]

    def mistakes(self, *, true: ClassRef | None = None, predicted: ClassRef | None = None,
                 sort_by: str = "loss", descending: bool = True,
                 limit: int | None = None) -> list[dict[str, Any]]:
        """All top-1 mistakes as rows, sorted by ``"loss"``, ``"confidence"`` or ``"index"``.

        The most confident mistakes are where supplementary C finds label noise and ambiguous
        images; ``true``/``predicted`` narrow to one confusion-matrix cell or row/column.
        """
        keys = {"loss": self.loss, "confidence": self.confidence, "index": None}
        if sort_by not in keys:
            raise ValueError(f"sort_by must be one of {list(keys)}; got {sort_by!r}")
        idx = self.indices(true=true, predicted=predicted, correct=False)
        if keys[sort_by] is not None:
            # Stable sort; ties keep dataset order in both directions.
            val = keys[sort_by][idx]
            idx = idx[np.argsort(-val if descending else val, kind="stable")]
        elif descending:
            idx = idx[::-1]
        correct = self.correct(1)
        return [self.row(int(i), correct) for i in idx[:limit]]

    def row(self, i: int, correct: np.ndarray | None = None) -> dict[str, Any]:
        """One example as a plain dict (for tables and widgets)."""
        ok = self.correct(1)[i] if correct is None else correct[i]
        t = int(self.label[i])
        p = int(self.predicted[i])
        return {
            "index": i, "id": str(self.ids[i]),
            "true": t, "true_name": self.class_names[t] if t >= 0 else None,
            "predicted": p, "predicted_name": self.class_names[p],
            "confidence": float(self.confidence[i]), "loss": float(self.loss[i]),
            "correct": bool(ok),
            "topk": [self.class_names[j] for j in self.topk[i]],
        }

    def rows(self) -> list[dict[str, Any]]:
        """Every example as a plain dict."""
        correct = self.correct(1)
        return [self.row(i, correct) for i in range(len(self))]

    def summary(self) -> dict[str, Any]:
        """Headline numbers, JSON-ready (for a notebook's metrics.json). Accuracies are fractions
        in [0, 1], as everywhere in bitkit's API (percent only in display strings); ``top5``
        only with more than 5 classes, like ``fit``'s evaluation."""
        out: dict[str, Any] = {"examples": len(self), "classes": self.num_classes,
                               "top1": self.top1, "mean_loss": float(self.loss.mean()) if len(self)
                               else float("nan"), "mistakes": int((~self.correct(1)).sum())}
        if self.num_classes > 5 and self.topk.shape[1] >= 5:  # as in fit: else always 1
            out["top5"] = self.top5
        return out

    # -- subsets -------------------------------------------------------------------------------

    def subset(self, keep: np.ndarray | Sequence[int]) -> Report:
        """The report restricted to a boolean mask or index array (e.g. a Dedup test set)."""
        k = np.asarray(keep)
        return Report(
            ids=self.ids[k], targets=self.targets[k], label=self.label[k], topk=self.topk[k],
            topk_prob=self.topk_prob[k], loss=self.loss[k], class_names=list(self.class_names),
            multi_label=self.multi_label, logits=None if self.logits is None else self.logits[k],
            meta=dict(self.meta),
        )

    def without_ids(self, ids: Sequence[str] | set[str]) -> Report:
        """The report without these example ids (supplementary B's "Dedup" test set)."""
        drop = np.isin(self.ids, np.asarray(sorted(set(map(str, ids))), dtype=str))
        return self.subset(~drop)

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write a compressed ``.npz`` (arrays + JSON metadata; loads without pickle)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        arrays = {"ids": self.ids.astype(str), "targets": self.targets, "label": self.label,
                  "topk": self.topk, "topk_prob": self.topk_prob, "loss": self.loss}
        if self.logits is not None:
            arrays["logits"] = self.logits
        info = {"class_names": self.class_names, "multi_label": self.multi_label,
                "meta": self.meta, "format": "bitkit.Report/1"}
        return save_npz(path, arrays, info)

    @classmethod
    def load(cls, path: str | Path) -> Report:
        z, info = load_npz(path, "Report", missing="report")
        return cls(ids=z["ids"], targets=z["targets"], label=z["label"], topk=z["topk"],
                   topk_prob=z["topk_prob"], loss=z["loss"], class_names=info["class_names"],
                   multi_label=bool(info["multi_label"]), logits=z.get("logits"),
                   meta=info["meta"])


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------


def _logits_fn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


class Scores(NamedTuple):
    """One batch scored: what both :class:`Report` and :class:`Accumulator` are built from."""

    loss: torch.Tensor  # (N,) float32 per-example loss
    top_idx: torch.Tensor  # (N, k) int64, best class first
    top_prob: torch.Tensor  # (N, k) float32, softmax (or sigmoid for multi-label)
    hits: torch.Tensor  # (N, k) bool: is the j-th best class a correct label
    targets: torch.Tensor  # (N,) int64 class ids, or (N, C) bool multi-hot
    multi_label: bool


def score(logits: torch.Tensor, targets: torch.Tensor, k: int = 5) -> Scores:
    """Per-example loss and top-k of one batch, on the logits' device. The one definition of
    loss and top-k in bitkit: ``fit``'s periodic evaluation and ``predict`` both use it.

    Targets of shape (N,) are class ids (softmax cross-entropy); (N, C) are multi-hot labels
    (sigmoid cross-entropy summed over classes: the negative log-likelihood of the example's
    whole label vector, as in multi-label upstream training, paper 3.1, and the loss ``fit``
    trains with). A multi-label example is top-k correct when any of its k best classes is a
    positive label (module docstring). Targets that do not fit the logits raise a ``ValueError``
    that says so, instead of an ``IndexError`` (or a CUDA assert) from deep inside torch.
    """
    lg = torch.as_tensor(logits).float()
    if lg.dim() != 2:
        raise ValueError(f"logits must be (N, C); got shape {tuple(lg.shape)}")
    n, c = lg.shape
    tg = torch.as_tensor(targets).to(lg.device)
    multi = tg.dim() == 2
    if multi and tuple(tg.shape) != (n, c):
        raise ValueError(f"multi-hot targets have {tg.shape[1]} classes (shape "
                         f"{tuple(tg.shape)}) but the model has {c} outputs (logits {(n, c)}); "
                         f"does the head match the dataset? model.reset_head({tg.shape[1]})")
    if not multi:
        if tuple(tg.shape) != (n,):
            raise ValueError(f"targets must be (N,) class ids or (N, C) multi-hot; got "
                             f"{tuple(tg.shape)} for {n} examples")
        tg = tg.long()
        if n and (int(tg.min()) < 0 or int(tg.max()) >= c):
            raise ValueError(f"labels span {int(tg.min())}..{int(tg.max())} but the model has {c} "
                             "outputs: does the head match the dataset's classes? Create the "
                             "model with num_classes = the number of classes "
                             "(or model.reset_head(n))")
    k = min(k, c)
    if multi:
        pos = tg > 0
        loss = F.binary_cross_entropy_with_logits(lg, tg.float(), reduction="none").sum(1)
        top_prob, top_idx = torch.sigmoid(lg).topk(k, dim=1)
        hits = pos.gather(1, top_idx)
        tg = pos
    else:
        loss = F.cross_entropy(lg, tg, reduction="none")
        top_prob, top_idx = torch.softmax(lg, dim=1).topk(k, dim=1)
        hits = top_idx == tg[:, None]
    return Scores(loss, top_idx, top_prob, hits, tg, multi)


class Accumulator:
    """Streaming loss, top-1 and top-5 over batches, in constant memory: ``fit``'s evaluation.

    All state is one float64 vector of *sums* (``totals``), so the accumulators of several
    processes merge with one all-reduce (``fit`` does ``all_reduce_sum(acc.totals)``) and the
    result equals one process seeing every batch. Values are fractions in [0, 1], like
    :attr:`Report.top1`; ``top5`` is only reported with more than 5 classes (with 5 or fewer
    every label is in the top 5, so it would always be 1).
    """

    #: The entries of ``totals``.
    FIELDS = ("loss_sum", "top1_hits", "top5_hits", "examples", "classes_x_batches", "batches")

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.totals = torch.zeros(len(self.FIELDS), dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> Scores:
        """Score one batch (see :func:`score`) and add it to the sums; returns the scores."""
        s = score(logits, targets, k=5)
        n, c = s.loss.shape[0], logits.shape[1]
        self.totals += torch.stack([
            s.loss.double().sum(), s.hits[:, 0].sum().double(), s.hits.any(1).sum().double(),
            torch.tensor(float(n), dtype=torch.float64, device=s.loss.device),
            torch.tensor(float(c), dtype=torch.float64, device=s.loss.device),
            torch.tensor(1.0, dtype=torch.float64, device=s.loss.device)]).to(self.totals.device)
        return s

    def metrics(self) -> dict[str, float]:
        """``{"loss", "top1"[, "top5"]}``: mean loss per example and top-k as fractions."""
        loss, top1, top5, count, classes, batches = self.totals.tolist()
        if count == 0:
            raise ValueError("the evaluation dataset is empty")
        out = {"loss": loss / count, "top1": top1 / count}
        if classes / batches > 5:
            out["top5"] = top5 / count
        return out


def report_from_logits(
    logits: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    *,
    ids: Sequence[str] | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    topk: int = 5,
    keep_logits: bool = True,
    meta: dict[str, Any] | None = None,
) -> Report:
    """Build a :class:`Report` from logits and targets you already have.

    Loss and top-k come from :func:`score`, computed on the device the logits are on (a CUDA
    tensor stays on the GPU until the per-example results are copied to the CPU).
    """
    if not isinstance(logits, torch.Tensor):
        logits = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    if not isinstance(targets, torch.Tensor):
        targets = torch.from_numpy(np.asarray(targets))
    lg = logits.float()
    if lg.dim() != 2:
        raise ValueError(f"logits must be (N, C); got shape {tuple(lg.shape)}")
    n, c = lg.shape
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for a model with {c} outputs")
    s = score(lg, targets, k=topk)
    if s.multi_label:
        # The one "true" class of a multi-label example (module docstring): its top-1 when that
        # is a positive label, else its highest-scoring positive label; -1 when it has none.
        best_pos = lg.masked_fill(~s.targets, float("-inf")).argmax(1)
        label = torch.where(s.hits[:, 0], s.top_idx[:, 0], best_pos)
        label = torch.where(s.targets.any(1), label, torch.full_like(label, -1))
    else:
        label = s.targets
    ids_np = np.asarray([str(i) for i in range(n)] if ids is None else [str(i) for i in ids])
    if len(ids_np) != n:
        raise ValueError(f"{len(ids_np)} ids for {n} examples")
    return Report(ids=ids_np, targets=s.targets.cpu().numpy(),
                  label=label.cpu().numpy().astype(np.int64),
                  topk=s.top_idx.cpu().numpy().astype(np.int64),
                  topk_prob=s.top_prob.cpu().numpy().astype(np.float32),
                  loss=s.loss.cpu().numpy().astype(np.float32), class_names=names,
                  multi_label=s.multi_label, logits=lg.cpu().numpy() if keep_logits else None,
                  meta=dict(meta or {}))


def predict(
    model: nn.Module,
    data: Data,
    *,
    batch_size: int = 64,
    topk: int = 5,
    keep_logits: bool = True,
    class_names: Sequence[str] | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Report:
    """Run ``model`` over ``data`` (no gradients, eval mode, model's device) -> :class:`Report`.

    ``class_names`` defaults to the dataset's ``class_names``. ``keep_logits=False`` keeps only
    the top-k (useful for 21k-class models on large test sets, where logits cost N x 21843 floats).
    Post-processing (softmax, top-k, losses: :func:`score`) runs per batch on the model's
    device; only its per-example results (and the logits, when kept) are copied to the CPU, so a
    GPU does the top-k over 21k classes.
    """
    ds = dataset_of(data)
    names = class_names if class_names is not None else getattr(ds, "class_names", None)
    parts: list[Report] = []
    for logits, targets, _ in run_model(model, data, _logits_fn, batch_size=batch_size,
                                        num_workers=num_workers, progress=progress):
        parts.append(report_from_logits(logits, targets, class_names=names,
                                        topk=topk, keep_logits=keep_logits))
    if not parts:
        raise ValueError("the data is empty: nothing to predict")
    meta = {"model": getattr(model, "name", type(model).__name__),
            "data": repr(ds) if len(repr(ds)) < 200 else type(ds).__name__,
            "bitkit_version": bitkit.__version__}
    first = parts[0]
    report = Report(
        ids=example_ids(data), targets=np.concatenate([p.targets for p in parts]),
        label=np.concatenate([p.label for p in parts]), topk=np.concatenate([p.topk for p in parts]),
        topk_prob=np.concatenate([p.topk_prob for p in parts]),
        loss=np.concatenate([p.loss for p in parts]), class_names=first.class_names,
        multi_label=first.multi_label,
        logits=np.concatenate([p.logits for p in parts]) if keep_logits else None, meta=meta,
    )
    bad = _unreadable_rows(data, report.ids, "predict")
    if bad is None:
        return report
    meta.update(unreadable_skipped=int(bad.sum()), unreadable_ids=report.ids[bad][:20].tolist())
    return report.subset(~bad)


def _unreadable_rows(data: Data, ids: np.ndarray, what: str) -> np.ndarray | None:
    """Rows of examples flagged unreadable during the pass (their rows show a substitute, see
    ``bitkit.data.corrupt``), or None when there are none; says so in a warning that points at
    the caller of ``predict`` / ``extract_features``."""
    bad = unreadable(dataset_of(data))
    if bad is None or not bad.any():
        return None
    warn_unreadable(f"{what}: left out {int(bad.sum())} of {len(bad)} example(s) whose image "
                    "could not be decoded", ids[bad].tolist(), stacklevel=3)
    return bad


# --------------------------------------------------------------------------------------------
# Features (pre-logits) for linear few-shot and near-duplicate search
# --------------------------------------------------------------------------------------------


@dataclass
class Features:
    """Pre-logits of every example with its target and id (paper 3.3: the representation)."""

    features: np.ndarray  # (N, D) float32
    targets: np.ndarray  # (N,) int64 or (N, C) bool
    ids: np.ndarray  # (N,) str

    def __len__(self) -> int:
        return len(self.ids)


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model.features(x)``, the pre-logits of a batch: the ``fn`` of :func:`run_model` for
    features (here and in ``bitkit.dedup``). A model without ``features`` gets a clear error."""
    if not callable(getattr(model, "features", None)):
        raise TypeError(f"{type(model).__name__} has no .features(x) method giving pre-logits; "
                        "use a bitkit.models model")
    return model.features(x)


def extract_features(
    model: nn.Module,
    data: Data,
    *,
    batch_size: int = 64,
    normalize: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> Features:
    """Pre-logits ``model.features(x)`` of every example (L2-normalised if ``normalize``)."""
    feats, targets = [], []
    for f, t, _ in run_model(model, data, pre_logits, batch_size=batch_size,
                             num_workers=num_workers, progress=progress, desc="features"):
        f = f.float()
        feats.append((F.normalize(f, dim=1) if normalize else f).cpu().numpy())
        targets.append(t.numpy() if t.dim() == 1 else (t > 0).numpy())
    if not feats:
        raise ValueError("the data is empty: no features to extract")
    out = Features(np.concatenate(feats), np.concatenate(targets), example_ids(data))
    bad = _unreadable_rows(data, out.ids, "extract_features")
    if bad is not None:  # a substitute's features under another example's id: drop them
        out = Features(out.features[~bad], out.targets[~bad], out.ids[~bad])
    return out
