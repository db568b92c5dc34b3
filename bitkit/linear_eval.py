"""Fast linear few-shot evaluation on frozen pre-logits (closed-form ridge regression).

The paper's few-shot numbers (section 3.5, Figure 2) come from fine-tuning; Google's later BiT
code tracks representation quality during training with a much cheaper probe, implemented here
exactly (the recipe of Google's later BiT few-shot evaluation):

1. whiten every feature with the *few-shot training set's* mean and (population) std + 1e-5;
2. append a constant bias feature of 100 -- large, so its weight is almost unregularised;
3. regress targets ``2 * onehot - 1`` (+1 for the class, -1 elsewhere);
4. closed-form ridge with l2 = 2^10, solved through whichever Gram matrix is smaller:
   ``W = (X^T X + l2 I)^-1 X^T Y`` (N >= D) or ``W = X^T (X X^T + l2 I)^-1 Y`` (N < D) -- the two
   are algebraically identical; with 10 examples of 10 classes and 2048 features the second is a
   100 x 100 solve instead of 2049 x 2049;
5. accuracy = how often the argmax of ``X_test W`` is the true class.

Subsets are balanced, seeded and nested across k within a seed (``bitkit.data.fewshot``); the
paper reports the median over 5 seeds, and :class:`FewShotResult` keeps every seed for the spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from bitkit.data.fewshot import kshot_indices
from bitkit.evaluate import Data, Features, extract_features

BIAS_FEATURE = 100.0
L2_REG = 2.0**10
WHITEN_EPS = 1e-5


def _targets_pm1(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Class ids (N,) or multi-hot (N, C) -> +-1 regression targets (N, C)."""
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            raise ValueError(f"multi-hot targets have {y.shape[1]} columns, expected {num_classes}")
        return np.where(y > 0, 1.0, -1.0)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels span [{y.min()}, {y.max()}], outside 0..{num_classes - 1}")
    out = -np.ones((y.size, num_classes))
    out[np.arange(y.size), y.astype(np.int64)] = 1.0
    return out


def _design(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != mean.size:
        raise ValueError(f"expected features (N, {mean.size}); got shape {x.shape}")
    z = (x - mean) / std
    return np.concatenate([z, np.full((len(z), 1), BIAS_FEATURE)], axis=1)


@dataclass
class RidgeProbe:
    """A fitted linear probe: whitening statistics and the (D + 1, C) weights (last row = bias)."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray

    def design(self, x: np.ndarray) -> np.ndarray:
        """Features -> whitened features with the constant bias column appended (float64)."""
        return _design(x, self.mean, self.std)

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self.design(x) @ self.weights

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.scores(x).argmax(axis=1)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Argmax accuracy; for multi-hot ``y`` the argmax must be one of the positive labels."""
        pred = self.predict(x)
        y = np.asarray(y)
        if y.ndim == 2:
            return float((y[np.arange(len(pred)), pred] > 0).mean())
        return float((pred == y).mean())


def fit_ridge(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
              l2: float = L2_REG) -> RidgeProbe:
    """Fit the few-shot probe (the released recipe) on ``features`` (N, D) and ``labels``.

    Computed in float64: the dual solve on a few dozen examples is exact either way, and float64
    keeps the primal solve well-conditioned for 2048-d features of a large training set.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D); got shape {x.shape}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
    if len(x) == 0:
        raise ValueError("cannot fit a probe on zero examples")
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0 (the ridge term keeps the solve well-posed); got {l2}")
    c = int(num_classes if num_classes is not None else (y.shape[1] if y.ndim == 2 else y.max() + 1))
    mean = x.mean(axis=0)
    std = x.std(axis=0) + WHITEN_EPS  # population std, as the reference implementation
    xd = _design(x, mean, std)
    t = _targets_pm1(y, c)
    n, d = xd.shape
    if n >= d:
        w = np.linalg.solve(xd.T @ xd + l2 * np.eye(d), xd.T @ t)
    else:
        w = xd.T @ np.linalg.solve(xd @ xd.T + l2 * np.eye(n), t)
    return RidgeProbe(mean, std, w)


def linear_fewshot_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                            test_y: np.ndarray, *, num_classes: int | None = None,
                            l2: float = L2_REG) -> float:
    """Fit on (train_x, train_y), return argmax accuracy on (test_x, test_y) in [0, 1]."""
    if num_classes is None:
        ty, sy = np.asarray(train_y), np.asarray(test_y)
        num_classes = ty.shape[1] if ty.ndim == 2 else int(max(ty.max(), sy.max())) + 1
    return fit_ridge(train_x, train_y, num_classes, l2).accuracy(test_x, test_y)


@dataclass
class FewShotResult:
    """Accuracy of every (shots, seed); medians and spreads per number of shots."""

    accuracies: dict[tuple[int, int], float]
    num_classes: int
    l2: float = L2_REG

    @property
    def shots(self) -> list[int]:
        return sorted({k for k, _ in self.accuracies})

    def per_seed(self, shots: int) -> list[float]:
        vals = [a for (k, _), a in sorted(self.accuracies.items()) if k == shots]
        if not vals:
            raise KeyError(f"no result for {shots}-shot; have {self.shots}")
        return vals

    def median(self, shots: int) -> float:
        """The paper's number: the median over seeds (section 3.5, Figure 2)."""
        return float(np.median(self.per_seed(shots)))

    def rows(self) -> list[dict[str, Any]]:
        """One row per number of shots: median, min, max, std over seeds, and every seed."""
        out = []
        for k in self.shots:
            v = np.asarray(self.per_seed(k))
            out.append({"shots": k, "examples": k * self.num_classes, "seeds": int(v.size),
                        "median": float(np.median(v)), "min": float(v.min()),
                        "max": float(v.max()), "std": float(v.std()),
                        "accuracies": [float(a) for a in v]})
        return out

    def summary(self) -> dict[str, float]:
        """``{"1-shot": median, ...}``, JSON-ready."""
        return {f"{k}-shot": self.median(k) for k in self.shots}


def fewshot_sweep(train: Features, test: Features, shots: Sequence[int] = (1, 5, 10, 25),
                  seeds: Sequence[int] = (0, 1, 2, 3, 4), *, num_classes: int | None = None,
                  class_names: Sequence[str] | None = None, l2: float = L2_REG) -> FewShotResult:
    """Linear few-shot accuracy for every k in ``shots`` and every seed.

    ``train`` holds the features of the whole training split (the pool the k-shot subsets are
    drawn from, by ``bitkit.data.fewshot.kshot_indices``: balanced, seeded, nested over k).
    """
    if train.targets.ndim != 1:
        raise ValueError("few-shot subsets need single-label training data (one class per example)")
    c = int(num_classes if num_classes is not None
            else max(train.targets.max(), np.max(test.targets, initial=0)) + 1)
    acc: dict[tuple[int, int], float] = {}
    for seed in seeds:
        for k in sorted(set(shots)):
            idx = kshot_indices(train.targets, k, seed, num_classes=c, class_names=class_names)
            probe = fit_ridge(train.features[idx], train.targets[idx], c, l2)
            acc[(k, seed)] = probe.accuracy(test.features, test.targets)
    return FewShotResult(acc, c, l2)


def linear_fewshot(model: nn.Module, train_data: Data, test_data: Data,
                   shots: Sequence[int] = (1, 5, 10, 25), seeds: Sequence[int] = (0, 1, 2, 3, 4),
                   *, batch_size: int = 64, progress: bool = True, l2: float = L2_REG) -> FewShotResult:
    """Extract pre-logits of both splits once, then run :func:`fewshot_sweep`.

    The whole training split is embedded once; every subset is then a row selection, which is
    what makes a 5-seed x 4-shot sweep cost one forward pass.
    """
    train = extract_features(model, train_data, batch_size=batch_size, progress=progress)
    test = extract_features(model, test_data, batch_size=batch_size, progress=progress)
    ds = getattr(train_data, "dataset", train_data)
    return fewshot_sweep(train, test, shots, seeds, num_classes=getattr(ds, "num_classes", None),
                         class_names=getattr(ds, "class_names", None), l2=l2)
