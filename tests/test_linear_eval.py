"""bitkit.linear_eval: the released few-shot probe recipe, checked against an independent ridge solve."""

import numpy as np
import pytest

from bitkit.evaluate import Features
from bitkit.linear_eval import (
    BIAS_FEATURE,
    L2_REG,
    fewshot_sweep,
    fit_ridge,
    linear_fewshot_accuracy,
)


def clusters(n_per_class: int, classes: int, dim: int, seed: int, spread: float = 0.3):
    g = np.random.default_rng(seed)
    centres = g.normal(size=(classes, dim)) * 3
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + spread * g.normal(size=(len(y), dim))
    return x.astype(np.float32), y


def reference_weights(x, y, classes, l2=L2_REG):
    """Primal ridge by least squares on the augmented system [X; sqrt(l2) I] w = [T; 0]."""
    x = x.astype(np.float64)
    z = (x - x.mean(0)) / (x.std(0) + 1e-5)
    z = np.concatenate([z, np.full((len(z), 1), 100.0)], axis=1)
    t = 2.0 * np.eye(classes)[y] - 1.0
    a = np.concatenate([z, np.sqrt(l2) * np.eye(z.shape[1])])
    b = np.concatenate([t, np.zeros((z.shape[1], classes))])
    return np.linalg.lstsq(a, b, rcond=None)[0]


@pytest.mark.parametrize("n_per_class,dim", [(2, 64), (40, 16)])  # dual (N < D) and primal
def test_matches_direct_ridge_solve(n_per_class, dim):
    x, y = clusters(n_per_class, 5, dim, seed=3, spread=2.0)
    probe = fit_ridge(x, y, 5)
    np.testing.assert_allclose(probe.weights, reference_weights(x, y, 5), rtol=1e-7, atol=1e-10)
    assert BIAS_FEATURE == 100.0 and L2_REG == 1024.0


def test_linearly_separable_features_are_classified_perfectly():
    x, y = clusters(25, 10, 128, seed=0)
    tx, ty = clusters(25, 10, 128, seed=0)  # same centres (same seed) ...
    tx = tx + np.random.default_rng(9).normal(scale=0.3, size=tx.shape).astype(np.float32)  # new noise
    for k in (1, 5):
        idx = np.concatenate([np.nonzero(y == c)[0][:k] for c in range(10)])
        assert linear_fewshot_accuracy(x[idx], y[idx], tx, ty) == 1.0


def test_whitening_uses_the_fewshot_set_statistics():
    # Per-feature affine changes are undone by whitening: predictions must not change.
    x, y = clusters(5, 4, 32, seed=1, spread=3.0)
    tx, ty = clusters(10, 4, 32, seed=1, spread=3.0)
    g = np.random.default_rng(2)
    a, b = g.uniform(0.5, 4.0, 32), g.normal(size=32) * 10
    p1 = fit_ridge(x, y, 4).predict(tx)
    p2 = fit_ridge(x * a + b, y, 4).predict(tx * a + b)
    np.testing.assert_array_equal(p1, p2)


def test_multi_hot_targets_and_errors():
    x, y = clusters(4, 3, 8, seed=4)
    multi = np.eye(3)[y]
    np.testing.assert_allclose(fit_ridge(x, multi, 3).weights, fit_ridge(x, y, 3).weights)
    with pytest.raises(ValueError, match="labels"):
        fit_ridge(x, y + 5, 3)
    with pytest.raises(ValueError, match="feature rows"):
        fit_ridge(x, y[:-1], 3)
    with pytest.raises(ValueError, match="l2"):
        fit_ridge(x, y, 3, l2=0)


def test_sweep_seeds_shots_median():
    x, y = clusters(30, 5, 32, seed=5, spread=4.0)
    tx, ty = clusters(20, 5, 32, seed=5, spread=4.0)
    train = Features(x, y, np.array([str(i) for i in range(len(y))]))
    test = Features(tx, ty, np.array([str(i) for i in range(len(ty))]))
    res = fewshot_sweep(train, test, shots=(1, 5, 10), seeds=(0, 1, 2, 3, 4))
    assert res.shots == [1, 5, 10] and len(res.accuracies) == 15
    rows = res.rows()
    for row in rows:
        assert row["seeds"] == 5
        assert row["median"] == pytest.approx(np.median(row["accuracies"]))
        assert row["min"] <= row["median"] <= row["max"]
    assert rows[0]["examples"] == 5
    assert rows[-1]["median"] >= rows[0]["median"]  # more shots, no worse on separable-ish data
    again = fewshot_sweep(train, test, shots=(1, 5, 10), seeds=(0, 1, 2, 3, 4))
    assert again.accuracies == res.accuracies  # seeded
    assert len(set(res.per_seed(1))) > 1  # different seeds, different subsets
    assert set(res.summary()) == {"1-shot", "5-shot", "10-shot"}
    with pytest.raises(ValueError, match="fewer than k=40"):
        fewshot_sweep(train, test, shots=(40,), seeds=(0,))
