"""The embedded world: deterministic, fast to sample anywhere, labels consistent, ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitkit.data import get_card, load
from bitkit.data.world import backgrounds, duplicate_of, pairs, rng
from bitkit.data.world.duplicates import PLANTED, pair_scene
from bitkit.data.world.taxonomy import held_out, upstream_taxonomy

TASKS = ("world-upstream", "world-upstream-multilabel", "world-objects", "world-fine",
         "world-texture", "world-count", "world-orientation", "world-location",
         "world-distance", "world-foregrounds")


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_and_index_give_same_bytes_in_any_batch(name):
    ds = load(name, "train", size=2000)
    alone, _ = ds.render([1234])
    batch, labels = ds.render([7, 1234, 99, 5])
    assert alone.dtype == torch.uint8 and alone.shape == (1, 3, ds.image_size, ds.image_size)
    assert torch.equal(alone[0], batch[1])
    assert np.array_equal(labels[1], ds.labels([1234])[0])
    again = load(name, "train", size=2000)[1234]
    assert torch.equal(again[0], alone[0])
    other_seed, _ = load(name, "train", size=2000, seed=1).render([1234])
    assert not torch.equal(other_seed[0], alone[0])
    assert not torch.equal(batch[0], batch[2])  # different indices, different images


def test_train_and_test_are_different_streams():
    tr, _ = load("world-objects", "train").render([3])
    te, _ = load("world-objects", "test").render([3])
    assert not torch.equal(tr, te)


def test_upstream_taxonomy_hierarchy_and_held_out_classes():
    tax = upstream_taxonomy()
    assert tax.num_classes == 728 == load("world-upstream", "train", size=10).num_classes
    assert not any(held_out(s, t, p) for s, t, p in zip(tax.shape, tax.texture, tax.palette, strict=False))
    for level, parents in tax.parents.items():
        assert parents.shape == (728,) and parents.max() < len(tax.level_names[level])
    objects = load("world-objects", "train")
    assert not set(objects.class_names) & set(tax.names)  # downstream classes unseen upstream


def test_upstream_any_size_without_disk_and_bad_size_message():
    ds = load("world-upstream", "train", size=10_000_000)
    images, labels = ds.render([0, 9_999_999])
    assert images.shape == (2, 3, 32, 32) and labels.shape == (2,)
    with pytest.raises(IndexError, match="out of range"):
        ds.render([10_000_000])
    with pytest.raises(ValueError, match="size must be between 1"):
        load("world-upstream", "train", size=0)


def test_a_misspelt_option_names_the_known_ones(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="option 'sizee' is not a world-objects option. Did you "
                                         "mean 'size'\\? Known: size, seed, image_size"):
        load("world-objects", "train", sizee=10)
    with pytest.raises(ValueError, match="Did you mean 'label_noise'"):
        load("world-upstream", "train", size=10, label_nosie=0.2)
    with pytest.raises(ValueError, match="objects must be three probabilities"):
        load("world-upstream-multilabel", "train", size=10, objects=(0.5, 0.2, 0.2))
    # a user's copy of a card with a typo in source.params
    text = open(get_card("world-count").path).read().replace("params: {", "params: {sed: 1, ")
    (tmp_path / "my-count.yaml").write_text(text.replace("name: world-count", "name: my-count"))
    monkeypatch.setenv("BITKIT_CARD_PATH", str(tmp_path))
    with pytest.raises(ValueError, match="my-count.yaml: field 'source.params': 'sed' is not a "
                                         "my-count option. Did you mean 'seed'"):
        load("my-count", "train")


def test_label_noise_rate_and_clean_labels():
    ds = load("world-upstream", "train", size=20_000, label_noise=0.2)
    idx = np.arange(20_000)
    noisy_rate = (ds.labels(idx) != ds.clean_labels(idx)).mean()
    assert 0.18 < noisy_rate < 0.22
    assert np.array_equal(load("world-upstream", "train", size=20_000).labels(idx),
                          ds.clean_labels(idx))
    with pytest.raises(ValueError, match="label_noise must be in"):
        load("world-upstream", "train", label_noise=1.5)


def test_multilabel_targets_are_multi_hot():
    ds = load("world-upstream-multilabel", "train", size=3000, label_noise=0.0)
    hot = ds.labels(np.arange(3000))
    per_image = hot.sum(1)
    assert ds.multi_label and hot.shape == (3000, 728)
    assert per_image.min() >= 1 and per_image.max() <= 3
    assert 1.22 < per_image.mean() < 1.30  # JFT's 1.26 labels per image (+- 4 standard errors)
    assert 0.12 < (per_image == 2).mean() < 0.16 and 0.045 < (per_image == 3).mean() < 0.075
    image, target = ds[0]
    assert target.dtype == torch.float32 and target.shape == (728,)
    assert torch.equal(target.bool(), torch.from_numpy(hot[0]))


@pytest.mark.parametrize("name, n", [("world-objects", 20), ("world-fine", 16),
                                     ("world-texture", 13), ("world-count", 6),
                                     ("world-orientation", 8), ("world-location", 8),
                                     ("world-distance", 4)])
def test_downstream_labels_cover_all_classes(name, n):
    ds = load(name, "train")
    counts = np.bincount(ds.targets, minlength=n)
    assert ds.num_classes == n == len(ds.class_names) and counts.min() > 2000 / n / 2


def test_location_label_is_where_the_object_is():
    from bitkit.data.world import rng
    from bitkit.data.world.downstream import _random_background

    ds = load("world-location", "test", size=300)
    idx = np.arange(300)
    imgs, labels = ds.render(idx)
    bg = _random_background(rng.keys(ds.seed, ds.stream, idx), 32) * 255  # same backgrounds
    obj = np.abs(imgs.numpy().astype(np.float32) - bg).max(1) > 60       # object pixels
    cols = np.arange(32)
    centre = (obj.sum(1) * cols).sum(1) / np.maximum(obj.sum((1, 2)), 1)
    x_bin = np.clip((centre + 0.5) / 4, 0, 7.99).astype(int)  # 8 bins of 4 pixels
    assert (np.abs(x_bin - labels) <= 1).mean() > 0.95


def test_planted_duplicates_ground_truth():
    n_up = 5000
    gt = pairs(n_up)
    assert len(gt) == PLANTED
    up = load("world-upstream", "train", size=n_up)
    test = load("world-objects", "test")
    for pair in gt[:8]:
        j = int(pair.upstream_id.rsplit(":", 1)[1])
        i = int(pair.downstream_id.rsplit(":", 1)[1])
        up_img, up_label = up[j]
        dn_img, dn_label = test[i]
        assert up.example_id(j) == pair.upstream_id and test.example_id(i) == pair.downstream_id
        assert torch.equal(up_img, torch.from_numpy(pair_scene(0, gt.index(pair), 32)))
        diff = (up_img.float() - dn_img.float()).abs().mean()
        assert 0 < diff < 30  # a near-duplicate: perturbed, not identical
        assert (dn_label, up_label) == (pair.downstream_label, pair.upstream_label)
        assert duplicate_of(pair.downstream_id, n_up) == pair.upstream_id
    unrelated = [(up[k][0].float() - test[k][0].float()).abs().mean() for k in range(20)]
    assert float(np.mean(unrelated)) > 60  # unrelated images are far apart
    assert {p.perturbation for p in gt} == {"shift", "noise", "colour", "jpeg"}
    assert len(pairs(100)) == 10  # a tiny upstream holds fewer copies
    assert duplicate_of("world-objects:test:0", n_up) is None
    # The multi-label upstream holds the same plants, each with its one label.
    multi = load("world-upstream-multilabel", "train", size=n_up, label_noise=0.0)
    for p, pair in enumerate(pairs(n_up, upstream="world-upstream-multilabel")[:3]):
        j = int(pair.upstream_id.rsplit(":", 1)[1])
        image, target = multi[j]
        assert multi.example_id(j) == pair.upstream_id
        assert pair.downstream_id == gt[p].downstream_id
        assert torch.nonzero(target).flatten().tolist() == [pair.upstream_label]
        assert torch.equal(image, torch.from_numpy(pair_scene(0, p, 32)))


def test_every_host_plants_its_own_pictures_with_their_labels():
    """world-fine, world-texture and world-count host 40 copies each, as world-objects does:
    the test image is a perturbed copy of the upstream one and keeps the host's label; the
    upstream copy keeps the label the upstream drew for that index."""
    n_up = 2000
    up = load("world-upstream", "train", size=n_up)
    everything = pairs(n_up, host=None)
    assert len(everything) == 4 * PLANTED
    assert len({p.upstream_id for p in everything}) == 4 * PLANTED  # no two share an index
    for host in ("world-fine", "world-texture", "world-count"):
        gt = pairs(n_up, host=host)
        assert len(gt) == PLANTED and all(p.downstream_id.startswith(host) for p in gt)
        test = load(host, "test")
        for p in gt[:4]:
            i = int(p.downstream_id.rsplit(":", 1)[1])
            j = int(p.upstream_id.rsplit(":", 1)[1])
            (dn, dn_label), (u, _) = test[i], up[j]
            assert dn_label == p.downstream_label and p.upstream_label is None
            assert torch.equal(u, torch.from_numpy(pair_scene(0, gt.index(p), 32, host)))
            assert 0 < (u.float() - dn.float()).abs().mean() < 90  # perturbed, not identical
            assert duplicate_of(p.downstream_id, n_up) == p.upstream_id
        # the upstream label of a non-object copy is the index's own draw (a web tag)
        j = np.array([int(gt[0].upstream_id.rsplit(":", 1)[1])])
        assert up.labels(j)[0] == up._labels(rng.keys(0, up.stream, j), j)[0]
    with pytest.raises(ValueError, match="hosts no planted duplicates"):
        pairs(n_up, host="world-location")


def test_foregrounds_masks_and_backgrounds():
    fg = load("world-foregrounds", "test")
    images, masks, labels = fg.render_with_masks([0, 1, 2])
    assert masks.dtype == torch.uint8 and masks.shape == (3, 64, 64)
    assert masks[:, 32, 32].min() == 255 and masks[:, 0, 0].max() == 0  # centred object
    assert torch.equal(images, fg.render([0, 1, 2])[0])
    assert len(fg.habitat_of(labels)) == 3
    bgs = backgrounds(64, variants=2)
    assert len(bgs) == 16 and len({b.name for b in bgs}) == 16
    assert all(b.license == "CC0-1.0" and b.attribution for b in bgs)
    assert bgs[0].image.shape == (3, 64, 64)


def test_digits_is_a_real_downstream_task():
    tr, te = load("digits", "train"), load("digits", "test")
    assert (len(tr), len(te)) == (1297, 500)
    image, label = te[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8 and image.max() > 200
    assert te.example_id(0) == "digits:1297" and label == int(te.targets[0])


def test_upstream_scene_kinds_closeups_and_flocks():
    """World v2: single-object upstream images are also close-ups and flocks (for texture and
    count transfer); the mix is a parameter, deterministic, and labels do not depend on it."""
    ds = load("world-upstream", "train", size=100_000)
    kinds = np.bincount(ds.scene_kinds(np.arange(5000)), minlength=4) / 5000
    assert abs(kinds[1] - 0.2) < 0.03 and abs(kinds[2] - 0.2) < 0.03 and kinds[3] == 0
    plain = load("world-upstream", "train", size=100_000, closeup=0.0, flock=0.0)
    assert (plain.scene_kinds(np.arange(500)) == 0).all()
    np.testing.assert_array_equal(plain.labels(np.arange(500)), ds.labels(np.arange(500)))
    flock = np.nonzero(ds.scene_kinds(np.arange(200)) == 2)[0][:4]
    a, _ = ds.render(flock)
    b, _ = plain.render(flock)
    assert not torch.equal(a, b)  # the same example, drawn as a flock instead of one object
    with pytest.raises(ValueError, match="closeup and flock"):
        load("world-upstream", "train", size=10, closeup=0.7, flock=0.5)
    multi = load("world-upstream-multilabel", "train", size=1000)
    assert set(np.unique(multi.scene_kinds(np.arange(300)))) >= {0, 3}
