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


# ------------------------------------------------------------------ planted label errors


def test_planted_label_errors_match_the_labels_the_dataset_gives():
    """world-objects-noisy: about 5% of the test labels (the card's rate) replaced by another
    class; the picture still shows the true class; ground truth from ``label_errors``."""
    from bitkit.data import SubsetDataset
    from bitkit.data.world import LabelError, label_errors

    card = get_card("world-objects-noisy")
    rate = card.source.params["test_label_noise"]
    assert rate == 0.05 and card.source.params["seed"] == 0
    truth = label_errors("world-objects-noisy")
    test = load("world-objects-noisy", "test")
    assert truth == label_errors(test) == test.label_errors()  # the same, however asked
    assert len(truth) == 55 and all(isinstance(e, LabelError) for e in truth)  # 5.5% of 1000
    idx = np.array([e.index for e in truth])
    assert (np.diff(idx) > 0).all()
    given = test.labels(np.arange(1000))
    clean = test.clean_labels(np.arange(1000))
    assert np.array_equal(np.nonzero(given != clean)[0], idx)  # nothing else differs
    for e in truth[:6]:
        image, label = test[e.index]
        assert e.example_id == test.example_id(e.index) == f"world-objects-noisy:test:{e.index}"
        assert label == e.given_label == given[e.index] != e.true_label == clean[e.index]
    # the pictures are drawn from the true labels: the same with or without the noise
    exact = load("world-objects-noisy", "test", test_label_noise=0.0)
    a, labels_a = test.render(idx[:8])
    b, labels_b = exact.render(idx[:8])
    assert torch.equal(a, b) and np.array_equal(labels_b, clean[idx[:8]])
    assert exact.label_errors() == [] and np.array_equal(exact.labels(np.arange(1000)), clean)
    # deterministic from (seed, index): a prefix, a subset and a batch agree; another seed not
    assert label_errors("world-objects-noisy", test_size=300) == [e for e in truth
                                                                  if e.index < 300]
    sub = SubsetDataset(test, idx[::2][::-1])
    assert label_errors(sub) == truth[::2]
    assert label_errors("world-objects-noisy", seed=1) != truth
    # the train split keeps exact labels
    train = load("world-objects-noisy", "train")
    assert train.label_errors() == [] and label_errors(train) == []


def test_label_error_rate_and_replacements_are_uniform():
    from bitkit.data.world import label_errors

    n = 20_000
    truth = label_errors("world-objects-noisy", test_size=n)
    assert 0.045 < len(truth) / n < 0.055  # 5% +- 3.2 standard errors
    shift = np.bincount([(e.given_label - e.true_label) % 20 for e in truth], minlength=20)
    assert shift[0] == 0 and shift[1:].min() > 0.5 * len(truth) / 19  # any other class
    with pytest.raises(ValueError, match=r"test_label_noise must be in \[0, 0.5\)"):
        load("world-objects-noisy", "test", test_label_noise=0.6)
    with pytest.raises(ValueError, match="Did you mean 'test_label_noise'"):
        load("world-objects", "test", test_label_nosie=0.1)


def test_label_errors_where_there_is_no_truth_or_no_noise():
    from bitkit.data.world import label_errors

    assert label_errors("world-objects") == []  # exact labels: the truth is "none wrong"
    assert label_errors(load("world-count", "test")) == []
    assert label_errors(load("digits", "test")) is None  # real data: nobody knows
    with pytest.raises(ValueError, match="not generated: nobody knows its label errors"):
        label_errors("cifar10")
    with pytest.raises(ValueError, match="not a downstream task"):
        label_errors("world-upstream")
    with pytest.raises(ValueError, match="a loaded dataset already has its size"):
        label_errors(load("world-objects-noisy", "test"), test_size=10)


def test_tasks_without_label_noise_give_the_data_they_always_gave():
    """The planted label errors live on their own card: the labels (and pictures) of the tasks
    other lessons and recorded benchmarks use are bit for bit what world version 5 drew
    before label noise existed (fingerprints taken before the change)."""
    import zlib

    before = {"world-objects:train": 590047549, "world-objects:test": 2728025742,
              "world-fine:train": 1250480723, "world-fine:test": 4008837737,
              "world-texture:train": 3138255360, "world-texture:test": 4173764295,
              "world-count:train": 3349858042, "world-count:test": 3486886237,
              "world-orientation:train": 1189733832, "world-orientation:test": 2059252466,
              "world-location:train": 4179323099, "world-location:test": 722796343,
              "world-distance:train": 3643880257, "world-distance:test": 3490158674}
    for key, crc in before.items():
        name, split = key.split(":")
        ds = load(name, split)
        assert zlib.crc32(ds.labels(np.arange(len(ds))).astype(np.int64).tobytes()) == crc, key
    images, _ = load("world-objects", "test").render(np.arange(0, 1000, 25))
    assert zlib.crc32(images.numpy().tobytes()) == 2588435740


def test_perturbation_says_exactly_what_each_test_copy_underwent():
    """``perturbation`` is what ``perturbed_scene`` applies, so a bench can break results down by
    it (JPEG quality, shift size): redoing each recorded step on the unperturbed picture gives
    the test copy back, byte for byte."""
    import io

    from PIL import Image

    from bitkit.data.world import duplicates

    qualities = []
    for host in duplicates.HOSTS:
        for p in range(8):
            how = duplicates.perturbation(3, p, host)
            assert how["kind"] == duplicates.PERTURBATIONS[p % 4]
            img = duplicates.pair_scene(3, p, 32, host).astype(np.float32)
            if how["kind"] == "shift":
                assert 1 <= how["dy"] <= 3 and 1 <= how["dx"] <= 3
                img = np.pad(img, ((0, 0), (how["dy"], 0), (how["dx"], 0)), mode="edge")[:, :32, :32]
            elif how["kind"] == "noise":
                img += duplicates.noise_bank(32)[how["pattern"]] * how["amplitude"]
            elif how["kind"] == "colour":
                assert all(0.8 <= g <= 1.2 for g in how["gains"])
                img *= np.asarray(how["gains"], np.float32)[:, None, None]
            else:
                qualities.append(how["quality"])
                buf = io.BytesIO()
                Image.fromarray(img.astype(np.uint8).transpose(1, 2, 0)).save(
                    buf, "JPEG", quality=how["quality"])
                img = np.asarray(Image.open(buf).convert("RGB"), np.float32).transpose(2, 0, 1)
            expected = np.clip(img + 0.5, 0, 255).astype(np.uint8)
            assert np.array_equal(duplicates.perturbed_scene(3, p, 32, host), expected), (host, p)
    assert all(30 <= q <= 69 for q in qualities) and len(set(qualities)) > 1
    with pytest.raises(ValueError, match="host"):
        duplicates.perturbation(0, 0, "world-orientation")
