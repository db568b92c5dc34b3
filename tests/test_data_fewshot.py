"""Few-shot subsets: balanced, seeded, nested across k; VTAB-1k's own 800/200/test slices and a
seeded random 800/200; clear errors."""

from __future__ import annotations

import io
import warnings

import datasets
import numpy as np
import pytest
from PIL import Image

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


def test_vtab1k_split_random_is_seeded_800_200_and_disjoint():
    ds = load("world-count", "train")
    tr, va = vtab1k_split(ds, how="random", seed=3)
    assert (len(tr), len(va)) == (800, 200)
    assert not set(tr.indices.tolist()) & set(va.indices.tolist())
    tr2, _ = vtab1k_split(ds, how="random", seed=3)
    assert np.array_equal(tr.indices, tr2.indices)
    assert not np.array_equal(tr.indices, vtab1k_split(ds, how="random", seed=4)[0].indices)
    assert tr.tag == "train800 random seed 3" and va.tag == "val200 random seed 3"
    assert sorted(tr.indices.tolist()) != list(range(800))  # not the official first 800
    small, _ = vtab1k_split(ds, how="random", seed=0, train=30, val=10)  # any sizes
    assert len(small) == 30
    with pytest.raises(ValueError, match="fewer than 800 \\+ 200"):
        vtab1k_split(load("world-count", "train", size=999), how="random", seed=0)


def test_vtab1k_split_defaults_to_the_official_slices():
    ds = load("world-count", "train")
    tr, va = vtab1k_split(ds)  # how="official": the card's vtab_splits, no seed
    assert tr.indices.tolist() == list(range(800)) and va.indices.tolist() == list(range(800, 1000))
    assert tr.tag == "train800 = train[:800] (VTAB-1k)" and va.parent is ds
    with pytest.raises(ValueError, match="seed=3 draws a random split: pass how='random'"):
        vtab1k_split(ds, seed=3)
    with pytest.raises(ValueError, match="how must be 'official' .* or 'random'"):
        vtab1k_split(ds, how="first")
    with pytest.raises(ValueError, match="how='official' takes VTAB's 800/200 of world-count; "
                                         "other sizes \\(300/100\\) need how='random'"):
        vtab1k_split(ds, train=300, val=100)
    with pytest.raises(ValueError, match=r"world-count: vtab_splits.val200 = 'train\[800:1000\]': "
                                         r"slice train\[800:1000\] needs at least 1000 examples "
                                         r"in split 'train', which has 999"):
        vtab1k_split(load("world-count", "train", size=999))
    with pytest.raises(ValueError, match="digits has no vtab_splits .* how='random', seed=0"):
        vtab1k_split(load("digits", "train"))


def test_vtab1k_loads_the_four_sets_of_an_embedded_task():
    from bitkit.data import vtab1k

    tr, va, both, test = vtab1k("world-objects", "train800", "val200", "train800val200", "test",
                                size=1200)
    assert tr.indices.tolist() == list(range(800)) and va.indices.tolist() == list(range(800, 1000))
    assert both.indices.tolist() == list(range(1000)) and tr.parent is va.parent is both.parent
    assert len(test) == 1200 and test.split == "test" and test.tag == "test = test (VTAB-1k)"
    assert both.example_id(850) == va.example_id(50) == "world-objects:train:850"
    assert load("world-objects", "test", size=1200).targets.tolist() == test.targets.tolist()
    with pytest.raises(ValueError, match="no VTAB-1k part 'val' .did you mean 'val200'"):
        vtab1k("world-objects", "val")
    with pytest.raises(ValueError, match="name the set.s. to load: train800, val200"):
        vtab1k("world-objects")


# ---------------------------------------------------------------- local copies of TFDS splits
def _png(i: int) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (i % 256, i // 256 % 256, 7)).save(buf, "PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _tfds_like(root, card_name, sizes):
    """A local copy laid out like the card's ``local_pattern``: one parquet file per TFDS
    split (``<split>-00000-of-00001.parquet``) with ``image``, ``label`` (ClassLabel with the
    card's classes) and an ``id`` naming the split and position, so a slice shows which rows
    it took."""
    from bitkit.data import get_card

    card = get_card(card_name)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(num_classes=card.num_classes),
                                  "id": datasets.Value("string")})
    for split, n in sizes.items():
        ds = datasets.Dataset.from_dict(
            {"image": [_png(i) for i in range(n)], "label": [i % card.num_classes for i in range(n)],
             "id": [f"{split}{i}" for i in range(n)]}, features=features)
        ds.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    return root


def _ids(ds):
    return [ds.example_id(i).rsplit(":", 1)[1] for i in range(len(ds))]


def _rows(split, start, stop):
    return [f"{split}{i}" for i in range(start, stop)]


def test_vtab1k_caltech101_at_tfds_sizes_takes_exactly_vtab_slices(tmp_path):
    from bitkit.data import SplitSizeWarning, vtab1k

    path = _tfds_like(tmp_path, "vtab-caltech101", {"train": 3060, "test": 6084})  # TFDS sizes
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitSizeWarning)  # the sizes VTAB computed with
        tr, va, both, test = vtab1k("vtab-caltech101", "train800", "val200", "train800val200",
                                    "test", path=path)
    assert tr.indices.tolist() == list(range(800))
    assert va.indices.tolist() == list(range(2754, 2954))       # train[2754:2954]
    assert both.indices.tolist() == list(range(800)) + list(range(2754, 2954))
    assert _ids(va) == _rows("train", 2754, 2954) and va.targets.tolist() == [
        i % 102 for i in range(2754, 2954)]
    assert len(test) == 6084 and _ids(test)[:2] == ["test0", "test1"]
    assert tr.tag == "train800 = train[:800] (VTAB-1k)"
    assert both.tag == "train800val200 = train[:800]+train[2754:2954] (VTAB-1k)"
    # vtab1k_split on the loaded train split gives the same two sets
    a, b = vtab1k_split(load("vtab-caltech101", "train", path=path))
    assert a.indices.tolist() == tr.indices.tolist() and b.indices.tolist() == va.indices.tolist()


def test_vtab1k_val200_from_the_validation_split_joins_two_splits(tmp_path):
    from bitkit.data import JoinedDataset, SplitSizeWarning, vtab1k

    path = _tfds_like(tmp_path, "vtab-dtd", {"train": 900, "validation": 300, "test": 50})
    with pytest.warns(SplitSizeWarning) as caught:  # once per split of another size than TFDS's
        tr, va, both = vtab1k("vtab-dtd", "train800", "val200", "train800val200", path=path)
    assert [str(w.message) for w in caught] == [
        "vtab-dtd: split 'train' has 900 examples, but VTAB's slices were computed for 1,880 "
        "(vtab_splits.sizes, TFDS's split): train[:800] are the same positions of another list "
        "of examples, not VTAB's",
        "vtab-dtd: split 'validation' has 300 examples, but VTAB's slices were computed for "
        "1,880 (vtab_splits.sizes, TFDS's split): validation[:200] are the same positions of "
        "another list of examples, not VTAB's"]
    assert caught[0].filename == __file__  # points at the caller
    assert _ids(tr) == _rows("train", 0, 800) and _ids(va) == _rows("validation", 0, 200)
    assert isinstance(both, JoinedDataset) and len(both) == 1000
    assert _ids(both) == _rows("train", 0, 800) + _rows("validation", 0, 200)
    assert both.example_id(800) == "vtab-dtd:validation:validation0"
    assert both.targets.tolist() == tr.targets.tolist() + va.targets.tolist()
    assert both.readable([0, 999]).tolist() == [True, True]
    report = both.corrupt_report()  # fit's end-of-run report covers both source splits
    assert (report.count, report.total) == (0, 900 + 300)
    image, label = both[999]
    assert label == 199 % 47 and np.asarray(image)[0, 0].tolist() == [199, 0, 7]
    with pytest.raises(ValueError, match=r"vtab-dtd: VTAB's train800 = 'train\[:800\]' and val200 "
                                         r"= 'validation\[:200\]' are not both slices of the "
                                         r"given 'train' split .*vtab1k\('vtab-dtd', 'train800', "
                                         r"'val200', path=...\)"):
        vtab1k_split(load("vtab-dtd", "train", path=path))


def test_vtab1k_test_slices_and_the_test_role(tmp_path):
    from bitkit.data import SplitSizeWarning, vtab1k

    norb = _tfds_like(tmp_path / "norb", "vtab-smallnorb-azimuth", {"train": 850, "test": 1001})
    with pytest.warns(SplitSizeWarning):
        va, test = vtab1k("vtab-smallnorb-azimuth", "val200", "test", path=norb)
        via_load = load("vtab-smallnorb-azimuth", "test", path=norb)  # no test role: the slice
    assert _ids(va) == _rows("test", 0, 200)
    assert _ids(test) == _rows("test", 500, 1001)  # test[50%:]: round(0.5 * 1001) = 500
    assert _ids(via_load) == _ids(test) and via_load.tag == "test = test[50%:] (VTAB-1k)"
    clevr = _tfds_like(tmp_path / "clevr", "vtab-clevr-count", {"train": 64000, "validation": 40})
    with pytest.warns(SplitSizeWarning):
        va, test = vtab1k("vtab-clevr-count", "val200", "test", path=clevr)
    assert _ids(va) == _rows("train", 63000, 63200)
    assert _ids(test) == _rows("validation", 0, 40)  # VTAB tests on TFDS's validation split
    assert _ids(load("vtab-clevr-count", "test", path=clevr)) == _ids(test)  # the test role


def test_vtab1k_refuses_slices_past_the_split_and_data_without_a_path(tmp_path):
    from bitkit.data import SplitSizeWarning, vtab1k

    path = _tfds_like(tmp_path, "vtab-cifar100", {"train": 1000, "test": 10})
    with pytest.warns(SplitSizeWarning), pytest.raises(
            ValueError, match=r"vtab-cifar100: vtab_splits.val200 = 'train\[45000:45200\]': slice "
                              r"train\[45000:45200\] needs at least 45200 examples in split "
                              r"'train', which has 1000"):
        vtab1k("vtab-cifar100", "val200", path=path)
    with pytest.raises(ValueError, match="vtab-dtd has no hub copy: pass path="):
        vtab1k("vtab-dtd", "val200")
    with pytest.raises(ValueError, match="cifar10 has no vtab_splits"):
        vtab1k("cifar10", "train800")
