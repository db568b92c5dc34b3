"""Few-shot subsets: balanced, seeded, nested across k; VTAB-1k 800/200; clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from bitkit.data import load
from bitkit.data.fewshot import kshot, kshot_family, kshot_indices, vtab1k_split


def test_balanced_seeded_and_nested():
    labels = np.random.default_rng(1).integers(0, 7, size=500)
    for seed in range(3):
        prev = set()
        for k in (1, 2, 5, 10):
            idx = kshot_indices(labels, k, seed)
            assert np.bincount(labels[idx], minlength=7).tolist() == [k] * 7
            assert prev <= set(idx.tolist())  # nested: smaller k is a subset
            prev = set(idx.tolist())
        assert np.array_equal(kshot_indices(labels, 5, seed), kshot_indices(labels, 5, seed))
    assert not np.array_equal(kshot_indices(labels, 5, 0), kshot_indices(labels, 5, 1))


def test_too_few_examples_names_the_class():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    with pytest.raises(ValueError, match=r"class 'bird' \(id 1\) has 2 example\(s\), fewer than "
                                         r"k=3; use k <= 2"):
        kshot_indices(labels, 3, class_names=["cat", "bird", "dog"])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        kshot_indices(labels, 0)


def test_labels_outside_the_classes_are_named():
    with pytest.raises(ValueError, match=r"2 label\(s\) outside 0..2 \(e.g. \[-1\]\).*unlabelled"):
        kshot_indices(np.array([0, 1, 2, -1, -1, 0, 1, 2]), 1)
    with pytest.raises(ValueError, match=r"1 label\(s\) outside 0..2 \(e.g. \[3\]\)"):
        kshot_indices(np.array([0, 1, 2, 3]), 1, num_classes=3, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="empty label array"):
        kshot_indices(np.array([], dtype=np.int64), 1)


def test_kshot_on_dataset_keeps_card_and_ids():
    ds = load("world-texture", "train", size=400)
    family = kshot_family(ds, ks=(1, 5), seeds=(0, 1))
    five = family[(5, 0)]
    assert len(five) == 5 * ds.num_classes and five.card is ds.card
    assert np.bincount(five.targets, minlength=ds.num_classes).tolist() == [5] * ds.num_classes
    ids_one = {family[(1, 0)].example_id(i) for i in range(len(family[(1, 0)]))}
    assert ids_one <= {five.example_id(i) for i in range(len(five))}
    image, label = five[3]
    assert label == five.targets[3] and image.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="multi-label"):
        kshot(load("world-upstream-multilabel", "train", size=50), 1)


def test_vtab1k_split_is_seeded_800_200_and_disjoint():
    ds = load("world-count", "train")
    tr, va = vtab1k_split(ds, seed=3)
    assert (len(tr), len(va)) == (800, 200)
    assert not set(tr.indices.tolist()) & set(va.indices.tolist())
    tr2, _ = vtab1k_split(ds, seed=3)
    assert np.array_equal(tr.indices, tr2.indices)
    assert not np.array_equal(tr.indices, vtab1k_split(ds, seed=4)[0].indices)
    with pytest.raises(ValueError, match="fewer than 800 \\+ 200"):
        vtab1k_split(load("world-count", "train", size=999))
