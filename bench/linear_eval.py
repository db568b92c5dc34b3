"""Linear few-shot probe (closed-form ridge, the released recipe) vs scikit-learn LogisticRegression.

Same features, same k-shot subsets (bitkit.data.fewshot: balanced, seeded), same run. For each
feature set and k, both probes are fitted on every seed's subset and scored on the full test set;
the script prints median accuracies and the speed ratio (LogisticRegression time / ridge time,
> 1 means the ridge probe is faster). LogisticRegression gets the same per-feature
standardisation (fitted on the few-shot set) so the comparison is about the solver, not scaling.

Feature sets:
- ``digits``: scikit-learn's 8x8 digits (real images, 64 raw pixel features, 10 classes);
- ``clusters``: 2048-d non-negative synthetic "pre-logits" (ReLU of noisy class centres),
  100 classes -- the shape of an R50x1 representation on a 100-class task.

    python bench/linear_eval.py [--shots 1 5 10 25] [--seeds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bitkit.data.fewshot import kshot_indices
from bitkit.linear_eval import fit_ridge


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm].astype(np.float32), y[perm]
    return x[:1000], y[:1000], x[1000:], y[1000:]


def clusters(classes: int = 100, dim: int = 2048, train_per_class: int = 30,
             test_per_class: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    g = np.random.default_rng(0)
    centres = g.normal(size=(classes, dim)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(classes), n)
        x = centres[y] + 4.0 * g.normal(size=(len(y), dim)).astype(np.float32)
        return np.maximum(x, 0), y

    return (*draw(train_per_class), *draw(test_per_class))


def run(name: str, data, shots: list[int], seeds: int) -> None:
    xtr, ytr, xte, yte = data
    classes = int(ytr.max()) + 1
    print(f"\n{name}: {xtr.shape[1]} features, {classes} classes, test {len(yte)}")
    print(f"{'k':>3} {'ridge acc':>10} {'logreg acc':>11} {'ridge s':>9} {'logreg s':>9} {'speed x':>8}")
    total_r = total_l = 0.0
    for k in shots:
        acc_r, acc_l, t_r, t_l = [], [], 0.0, 0.0
        for seed in range(seeds):
            idx = kshot_indices(ytr, k, seed, num_classes=classes)
            t0 = time.perf_counter()
            acc_r.append(fit_ridge(xtr[idx], ytr[idx], classes).accuracy(xte, yte))
            t1 = time.perf_counter()
            lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", UserWarning)  # "more classes than 50% of samples"
                lr.fit(xtr[idx], ytr[idx])
            acc_l.append(float((lr.predict(xte) == yte).mean()))
            t2 = time.perf_counter()
            t_r += t1 - t0
            t_l += t2 - t1
        total_r += t_r
        total_l += t_l
        print(f"{k:>3} {100 * np.median(acc_r):>9.1f}% {100 * np.median(acc_l):>10.1f}% "
              f"{t_r:>9.3f} {t_l:>9.3f} {t_l / t_r:>7.1f}x")
    print(f"all k: ridge {total_r:.3f}s, logreg {total_l:.3f}s -> ridge {total_l / total_r:.1f}x faster")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 25])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{a.seeds} seeds per k; accuracies are medians over seeds (paper 4.1)")
    run("digits", digits(), a.shots, a.seeds)
    run("clusters", clusters(), a.shots, a.seeds)


if __name__ == "__main__":
    main()
