"""Loading real-dataset schemas from local fixtures (the hub is offline in tests)."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bitkit.data import load
from bitkit.data.sources import to_hf

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def _png(colour: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """A tiny parquet copy with CIFAR-10's hub schema: ``img`` (Image) and ``label``
    (ClassLabel); two train images are corrupt (truncated bytes, not an image)."""
    root = tmp_path_factory.mktemp("cifar10")
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(names=CIFAR_NAMES)})
    for split, n in (("train", 30), ("test", 10)):
        imgs = [{"bytes": _png((i * 8, 0, 255 - i * 8)), "path": None} for i in range(n)]
        if split == "train":
            imgs[4] = {"bytes": _png((1, 2, 3))[:40], "path": None}  # truncated PNG
            imgs[5] = {"bytes": b"definitely not an image", "path": None}
        ds = datasets.Dataset.from_dict({"img": imgs, "label": [i % 10 for i in range(n)]},
                                        features=features)
        ds.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    return root


def test_card_with_local_path_reads_the_hub_schema(cifar_like):
    ds = load("cifar10", "test", path=cifar_like)
    assert len(ds) == 10 and ds.num_classes == 10 and ds.class_names == CIFAR_NAMES
    assert ds.card.name == "cifar10" and not ds.multi_label
    image, label = ds[3]
    assert isinstance(image, Image.Image) and image.size == (32, 32) and label == 3
    assert ds.example_id(3) == "cifar10:test:3"
    assert ds.targets.tolist() == [i % 10 for i in range(10)]


def test_corrupt_images_are_skipped_counted_and_reported(cifar_like):
    ds = load("cifar10", "train", path=cifar_like)
    image, label = ds[4]                       # corrupt -> the next readable one (index 6)
    assert label == 6 and np.asarray(image)[0, 0].tolist() == [48, 0, 207]
    report = ds.corrupt_report()
    assert report.count == 2 and report.ids == ["cifar10:train:4", "cifar10:train:5"]
    assert "skipped 2 unreadable image(s) of 30" in str(report)


def test_corrupt_counts_reach_the_main_process_from_dataloader_workers(cifar_like):
    from bitkit.data import preprocess

    ds = preprocess(load("cifar10", "train", path=cifar_like), train=True, resize=36, crop=32)
    loader = DataLoader(ds, batch_size=8, num_workers=2, shuffle=True)
    seen = sum(len(y) for _, y in loader)      # an epoch: no crash, full batches
    assert seen == 30
    assert ds.corrupt_report().count == 2


def test_scan_then_evaluate_only_readable(cifar_like):
    ds = load("cifar10", "train", path=cifar_like)
    assert ds.scan(progress=False).count == 2
    clean = ds.without_corrupt()
    assert len(clean) == 28 and clean.example_id(4) == "cifar10:train:6"


def test_imagefolder_path_without_a_card(tmp_path):
    for split in ("train", "test"):
        for cls, colour in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
            d = tmp_path / "pets" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 10), colour).save(d / f"{i}.png")
    ds = load(tmp_path / "pets", "test")
    assert ds.class_names == ["cat", "dog"] and len(ds) == 6
    assert ds.card.image_size == (10, 20) and ds.card.name == "pets"
    assert sorted(ds.targets.tolist()) == [0, 0, 0, 1, 1, 1]


def test_world_materialises_as_hf_dataset_and_round_trips(tmp_path):
    world = load("world-count", "test", size=40)
    hf = to_hf(world, progress=False)
    assert hf.features["label"].names == world.class_names
    hf.to_parquet(str(tmp_path / "test-0.parquet"))
    back = load(tmp_path, "test")
    for i in (0, 17, 39):
        img, label = back[i]
        assert torch.equal(torch.from_numpy(np.array(img)).permute(2, 0, 1), world[i][0])
        assert label == world[i][1] and back.example_id(i).endswith(world.example_id(i))
    multi = to_hf(load("world-upstream-multilabel", "train", size=6), progress=False)
    assert isinstance(multi.features["label"], datasets.Sequence)


def test_user_mistakes_get_clear_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="No dataset at .*does not exist"):
        load(str(tmp_path / "nope"), "train")
    with pytest.raises(KeyError, match="Did you mean 'cifar100'"):
        load("cifar1000", "train")
    with pytest.raises(ValueError, match="has no split 'validation'; use one of"):
        load("cifar10", "validation")
    with pytest.raises(FileNotFoundError, match="could not load cifar10 from the HF hub .*path="):
        load("cifar10", "test")                # HF_HUB_OFFLINE=1 in tests
    with pytest.raises(ValueError, match="not public"):
        load("jft300m", "train")
    with pytest.raises(ValueError, match="benchmark of 19 datasets; load one of them"):
        load("vtab-1k", "train")
    with pytest.raises(ValueError, match="pass path=... to local data laid out like"):
        load("vtab-dtd", "train")
    with pytest.raises(ValueError, match="only apply to embedded datasets"):
        load("digits", "train", size=10)


def test_kshot_picks_only_readable_examples_so_labels_match_the_images(cifar_like):
    from bitkit.data import kshot

    ds = load("cifar10", "train", path=cifar_like)   # indices 4 (deer) and 5 (dog) are corrupt
    for seed in range(5):
        sub = kshot(ds, 2, seed)
        assert 4 not in sub.indices and 5 not in sub.indices
        # each item's label is its target: no substitute from another class slipped in
        assert [sub[i][1] for i in range(len(sub))] == sub.targets.tolist()
        assert np.bincount(sub.targets, minlength=10).tolist() == [2] * 10
    assert kshot(ds, 1, 0).indices.tolist() == [i for i in kshot(ds, 2, 0).indices
                                                if i in kshot(ds, 1, 0).indices]  # nested
    with pytest.raises(ValueError, match=r"class 'deer' \(id 4\) has 2 readable example\(s\) "
                                         r"\(1 unreadable skipped\), fewer than k=3"):
        kshot(ds, 3)


def test_fit_reports_skipped_images_at_the_end(cifar_like, tmp_path):
    from bitkit.data import SubsetDataset, preprocess
    from bitkit.events import read_jsonl
    from bitkit.hyperrule import Schedule
    from bitkit.models import create
    from bitkit.train import TrainConfig, fit

    raw = load("cifar10", "train", path=cifar_like)
    data = preprocess(SubsetDataset(raw, range(30)), train=True, resize=18, crop=16)
    torch.manual_seed(0)
    # the category every "left out unreadable images" message has, naming what was skipped
    from bitkit.data.corrupt import UnreadableImagesWarning

    with pytest.warns(UnreadableImagesWarning, match=r"fit: training data: skipped 2 unreadable "
                      r"image\(s\) of 30: cifar10:train:4, cifar10:train:5"):
        result = fit(create("R14x0.25", num_classes=10), data,
                     TrainConfig(Schedule(0.1, 1, (), 4), batch_size=8, progress=False),
                     out_dir=tmp_path)   # 32 draws from 30 examples: both bad ones are hit
    end = read_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert end["kind"] == "end" and end["metrics"] == {
        "corrupt_skipped": 2, "corrupt_ids": ["cifar10:train:4", "cifar10:train:5"]}
    assert result.corrupt.count == 2


def test_local_card_counts_classes_over_splits_and_detects_multi_label(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    for split, labels in (("train", [0, 1, 2, 1]), ("test", [4, 0])):  # class 4: test only
        datasets.Dataset.from_dict(
            {"image": [{"bytes": _png((9, 9, 9)), "path": None}] * len(labels), "label": labels},
            features=feats).to_parquet(str(root / f"{split}-00000.parquet"))
    train = load(root, "train")
    assert train.num_classes == 5 and train.card.num_classes == 5 and not train.multi_label

    multi = tmp_path / "multi"
    multi.mkdir()
    feats = datasets.Features({"image": datasets.Image(),
                               "labels": datasets.Sequence(datasets.Value("int64"))})
    datasets.Dataset.from_dict(
        {"image": [{"bytes": _png((9, 9, 9)), "path": None}] * 3, "labels": [[0, 3], [1], []]},
        features=feats).to_parquet(str(multi / "train-00000.parquet"))
    ds = load(multi, "train")
    assert ds.multi_label and ds.card.multi_label and ds.num_classes == 4
    assert ds.targets.tolist() == [[True, False, False, True], [False, True, False, False],
                                   [False] * 4]


def test_a_misspelt_path_suggests_its_siblings(tmp_path):
    (tmp_path / "cifar10_local").mkdir()
    (tmp_path / "pets").mkdir()
    with pytest.raises(FileNotFoundError, match=r"does not exist\. Did you mean "
                                                r"'.*cifar10_local'\?"):
        load(str(tmp_path / "cifar10_locl"), "train")
    with pytest.raises(FileNotFoundError, match=r"not even '.*nofolder' exists; the nearest "
                                                r"folder that does is"):
        load(str(tmp_path / "nofolder" / "x"), "train")


def test_evaluation_leaves_out_unreadable_images_and_says_so(cifar_like):
    """A substitute (the next readable image) must not be scored under the broken example's
    id: predict and extract_features drop those rows and count them."""
    from bitkit.data import kshot, preprocess
    from bitkit.data.corrupt import UnreadableImagesWarning
    from bitkit.evaluate import extract_features, predict
    from bitkit.models import create

    raw = load("cifar10", "train", path=cifar_like)   # 4 and 5 are corrupt
    model = create("R14x0.25", num_classes=10)
    with pytest.warns(UnreadableImagesWarning, match=r"predict: left out 2 of 30 example\(s\)") as rec:
        report = predict(model, preprocess(raw, train=False, resize=32, crop=32), progress=False)
    assert "cifar10:train:4, cifar10:train:5. To find all of them up front, call scan()" in str(
        rec[0].message)
    assert len(report) == 28 and "cifar10:train:4" not in report.ids
    assert report.ids.tolist() == [f"cifar10:train:{i}" for i in range(30) if i not in (4, 5)]
    assert report.targets.tolist() == [i % 10 for i in range(30) if i not in (4, 5)]
    assert report.meta["unreadable_skipped"] == 2
    assert report.meta["unreadable_ids"] == ["cifar10:train:4", "cifar10:train:5"]
    with pytest.warns(UnreadableImagesWarning, match="extract_features: left out 2 of 30"):
        feats = extract_features(model, preprocess(raw, train=False, resize=32, crop=32),
                                 progress=False)
    assert len(feats) == 28 and feats.targets.tolist() == report.targets.tolist()
    # fit's periodic evaluation scores the same 28 examples (a fresh copy: nothing flagged yet)
    from bitkit.hyperrule import Schedule
    from bitkit.train import TrainConfig, evaluate

    data = preprocess(load("cifar10", "train", path=cifar_like), train=False, resize=32, crop=32)
    config = TrainConfig(Schedule(0.1, 1, (), 2), batch_size=8, progress=False)
    metrics = evaluate(model, data, config, "softmax", torch.device("cpu"))
    assert metrics["top1"] == pytest.approx(report.top1)
    assert metrics["loss"] == pytest.approx(float(report.loss.mean()), rel=1e-5)
    # A subset maps its positions to the parent's flags: a clean 1-shot set loses nothing.
    clean = predict(model, preprocess(kshot(raw, 1), train=False, resize=32, crop=32),
                    progress=False)
    assert len(clean) == 10 and "unreadable_skipped" not in clean.meta


def test_materialising_leaves_out_unreadable_images(cifar_like, tmp_path):
    from bitkit.data.corrupt import UnreadableImagesWarning
    from bitkit.data.streaming import ShardStream, write_shards

    raw = load("cifar10", "train", path=cifar_like)
    with pytest.warns(UnreadableImagesWarning,
                      match=r"to_hf\(cifar10\): left out 2 unreadable image\(s\)"):
        hf = to_hf(raw, progress=False)
    assert len(hf) == 28 and "cifar10:train:4" not in hf["id"]
    assert hf["label"] == [i % 10 for i in range(30) if i not in (4, 5)]
    with pytest.warns(UnreadableImagesWarning, match="write_shards.*: left out 2 unreadable"):
        paths = write_shards(raw, tmp_path, shard_size=4, progress=False)
    assert len(paths) == 8  # indices 4-5 are gone, 6-7 still make shard 1
    stream = ShardStream(paths, num_classes=10, buffer_size=0)
    assert [y for _, y in stream] == [i % 10 for i in range(30) if i not in (4, 5)]
    assert stream.skipped() == 0


def _parquet(root, split, columns, features):
    root.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(
        str(root / f"{split}-00000-of-00001.parquet"))


def test_other_hub_schemas_cifar100_and_pets(tmp_path):
    """CIFAR-100's hub copy has two ClassLabel columns (``fine_label`` 100, ``coarse_label``
    20), Pets' has breed and species: the card's column, or the one with the card's class
    count, is the label."""
    n = 6
    images = [{"bytes": _png((i * 30, 9, 9)), "path": None} for i in range(n)]
    fine = datasets.ClassLabel(names=[f"fine{i}" for i in range(100)])
    coarse = datasets.ClassLabel(names=[f"coarse{i}" for i in range(20)])
    _parquet(tmp_path / "c100", "test", {"img": images, "fine_label": [99, 1, 2, 3, 4, 5],
                                         "coarse_label": [19, 0, 0, 1, 1, 2]},
             datasets.Features({"img": datasets.Image(), "fine_label": fine,
                                "coarse_label": coarse}))
    c100 = load("cifar100", "test", path=tmp_path / "c100")
    assert c100.num_classes == 100 and c100.targets.tolist() == [99, 1, 2, 3, 4, 5]
    assert c100.class_names[99] == "fine99"

    species = datasets.ClassLabel(names=["cat", "dog"])
    breed = datasets.ClassLabel(names=[f"breed{i}" for i in range(37)])
    _parquet(tmp_path / "pets", "test", {"image": images, "species": [0, 1, 0, 1, 0, 1],
                                         "label": [36, 1, 2, 3, 4, 5],
                                         "image_id": [f"p{i}" for i in range(n)]},
             datasets.Features({"image": datasets.Image(), "species": species, "label": breed,
                                "image_id": datasets.Value("string")}))
    pets = load("oxford-iiit-pet", "test", path=tmp_path / "pets")
    assert pets.label_column == "label" and pets.num_classes == 37
    assert pets.targets.tolist() == [36, 1, 2, 3, 4, 5]
    assert pets.example_id(2) == "oxford-iiit-pet:test:p2"


def test_data_that_does_not_match_its_card_is_a_clear_error(cifar_like, tmp_path):
    images = [{"bytes": _png((9, 9, 9)), "path": None}] * 3
    _parquet(tmp_path / "c100", "test", {"img": images, "label": [0, 1, 2]},
             datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(
                 names=[str(i) for i in range(100)])}))
    with pytest.raises(ValueError, match=r"cifar10:test: the data's 'label' column has 100 "
                                         r"classes, but the card says num_classes: 10"):
        load("cifar10", "test", path=tmp_path / "c100")
    _parquet(tmp_path / "unlabelled", "test", {"img": images, "label": [-1, -1, 3]},
             datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")}))
    with pytest.raises(ValueError, match=r"2 label\(s\) outside 0..9, e.g. \[-1\]. -1 means "
                                         r"unlabelled"):
        load("cifar10", "test", path=tmp_path / "unlabelled")
    _parquet(tmp_path / "onebased", "test", {"img": images, "label": [1, 5, 10]},
             datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")}))
    with pytest.raises(ValueError, match=r"1 label\(s\) outside 0..9, e.g. \[10\]. Are the "
                                         r"labels 1-based"):
        load("cifar10", "test", path=tmp_path / "onebased")


def test_val_role_finds_validation_named_data_in_every_layout(tmp_path):
    """Flowers' card has a ``val`` role; local copies name that split val, validation or dev,
    as files, folders, a save_to_disk DatasetDict or an imagefolder tree."""
    feats = datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=["a", "b"])})
    rows = {"image": [{"bytes": _png((9, 9, 9)), "path": None}] * 4, "label": [0, 1, 1, 0]}
    _parquet(tmp_path / "parquet", "validation", rows, feats)
    (tmp_path / "arrow" / "dev").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(tmp_path / "arrow-src"))
    for f in (tmp_path / "arrow-src").glob("*.arrow"):
        f.rename(tmp_path / "arrow" / "dev" / f.name)
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(rows, features=feats)}) \
        .save_to_disk(str(tmp_path / "disk"))
    for cls in ("a", "b"):
        (tmp_path / "folder" / "val" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "folder" / "val" / cls / f"{i}.png")
    for layout in ("parquet", "arrow", "disk", "folder"):
        ds = load(tmp_path / layout, "val")
        assert len(ds) == 4 and sorted(ds.targets.tolist()) == [0, 0, 1, 1], layout
    with pytest.raises(ValueError, match="has splits \\['validation'\\], not 'test'"):
        load(tmp_path / "disk", "test")
