"""bitkit.evaluate: known answers on hand-made predictions, and predict() on a real model."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bitkit import models
from bitkit.evaluate import Report, example_ids, extract_features, predict, report_from_logits

NAMES = ["cat", "dog", "fox"]
# 8 examples: targets and the top-1 prediction the logits are built to give.
TARGETS = np.array([0, 0, 0, 1, 1, 2, 2, 2])
PREDS = np.array([0, 1, 1, 1, 0, 2, 1, 2])
STRENGTH = np.array([2.0, 1.0, 3.0, 2.0, 4.0, 2.0, 0.5, 2.0])


def hand_made() -> Report:
    logits = np.zeros((8, 3), np.float32)
    logits[np.arange(8), PREDS] = STRENGTH
    return report_from_logits(logits, TARGETS, ids=[f"ex{i}" for i in range(8)], class_names=NAMES)


def test_accuracy_confusion_and_per_class_known_answers():
    r = hand_made()
    assert r.top1 == pytest.approx(4 / 8)
    assert r.top5 == 1.0  # 3 classes: every label is in the top-3
    np.testing.assert_array_equal(r.confusion_matrix(), [[1, 2, 0], [1, 1, 0], [0, 1, 2]])
    np.testing.assert_allclose(r.per_class_accuracy(), [1 / 3, 1 / 2, 2 / 3])
    mc = r.most_confused(3)
    assert [(m["true_name"], m["predicted_name"], m["count"]) for m in mc] == [
        ("cat", "dog", 2), ("dog", "cat", 1), ("fox", "dog", 1)]
    assert r.most_confused_table(3).splitlines() == [
        "true class     predicted as  count",
        "cat         →  dog               2",
        "dog         →  cat               1",
        "fox         →  dog               1"]


def test_topk_accuracy():
    logits = np.array([[3, 2, 1, 0], [0, 1, 2, 3], [1, 3, 2, 0]], np.float32)
    r = report_from_logits(logits, np.array([1, 1, 1]), topk=3)
    assert [r.accuracy(k) for k in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    np.testing.assert_array_equal(r.topk, [[0, 1, 2], [3, 2, 1], [1, 2, 0]])


def test_mistakes_sorted_and_filtered():
    r = hand_made()
    wrong = [1, 2, 4, 6]
    # loss of a mistake = log(e^s + 2) - 0: grows with the wrong logit's strength s
    by_loss = [m["index"] for m in r.mistakes()]
    assert by_loss == sorted(wrong, key=lambda i: -STRENGTH[i]) == [4, 2, 1, 6]
    assert [m["index"] for m in r.mistakes(sort_by="confidence", descending=False)] == [6, 1, 2, 4]
    assert [m["id"] for m in r.mistakes(true="cat")] == ["ex2", "ex1"]
    assert [m["index"] for m in r.mistakes(predicted=1, sort_by="index", descending=False)] == [1, 2, 6]
    m = r.mistakes(limit=1)[0]
    assert (m["true_name"], m["predicted_name"], m["correct"]) == ("dog", "cat", False)
    expected = np.log(np.exp(4.0) + 2.0)
    assert m["loss"] == pytest.approx(expected, rel=1e-5)
    assert m["confidence"] == pytest.approx(np.exp(4.0) / (np.exp(4.0) + 2), rel=1e-5)
    np.testing.assert_array_equal(r.indices(true="fox", correct=True), [5, 7])
    with pytest.raises(ValueError, match="unknown class name 'wolf'"):
        r.mistakes(true="wolf")
    with pytest.raises(ValueError, match="sort_by"):
        r.mistakes(sort_by="id")


def test_multi_label_convention():
    # ex0: top-1 (class 2) is a positive -> correct; ex1: top-1 class 0 not positive, positives 1
    # and 2, class 2 scores higher -> "true" class 2; ex2: no positive label -> mistake, no row.
    logits = np.array([[0.0, 1.0, 3.0], [5.0, 1.0, 2.0], [1.0, 0.0, 0.0]], np.float32)
    targets = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 0]], np.float32)
    r = report_from_logits(logits, targets, class_names=NAMES)
    assert r.multi_label
    np.testing.assert_array_equal(r.correct(1), [True, False, False])
    np.testing.assert_array_equal(r.correct(2), [True, True, False])
    np.testing.assert_array_equal(r.label, [2, 2, -1])
    assert r.confusion_matrix().sum() == 2 and r.confusion_matrix()[2, 0] == 1
    # per-example loss = summed sigmoid cross-entropy
    t = torch.tensor(targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), t, reduction="none").sum(1).numpy()
    np.testing.assert_allclose(r.loss, expected, rtol=1e-6)


def test_save_load_roundtrip_without_pickle(tmp_path):
    r = hand_made()
    r.meta["model"] = "R14x0.25"
    path = r.save(tmp_path / "report")
    assert path.suffix == ".npz"
    back = Report.load(path)
    for f in ("ids", "targets", "label", "topk", "topk_prob", "loss", "logits"):
        np.testing.assert_array_equal(getattr(back, f), getattr(r, f))
    assert back.class_names == NAMES and back.meta["model"] == "R14x0.25"
    np.testing.assert_array_equal(back.confusion_matrix(), r.confusion_matrix())
    with pytest.raises(FileNotFoundError, match="no report"):
        Report.load(tmp_path / "missing.npz")


def test_rows_summary_subset():
    r = hand_made()
    rows = r.rows()
    assert len(rows) == 8 and [x["correct"] for x in rows] == list(TARGETS == PREDS)
    assert rows[0]["topk"][0] == "cat"
    s = r.summary()
    assert s["mistakes"] == 4 and s["top1"] == 0.5 and s["examples"] == 8
    d = r.without_ids(["ex1", "ex2"])
    assert len(d) == 6 and d.top1 == pytest.approx(4 / 6)
    assert r.per_class_rows()[0] == {"class": 0, "name": "cat", "count": 3, "correct": 1,
                                     "accuracy": pytest.approx(1 / 3)}


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="head match"):
        report_from_logits(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="top-2"):
        report_from_logits(np.zeros((2, 10)), np.array([0, 3]), topk=1).accuracy(2)


class IdDataset(Dataset):
    """uint8 images with ids and class names, as bitkit.data datasets give them."""

    def __init__(self, n: int = 10, size: int = 32):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        self.labels = torch.arange(n) % 4
        self.class_names = ["a", "b", "c", "d"]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])

    def example_id(self, i):
        return f"toy:test:{i}"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.create("R14x0.25", num_classes=4, zero_head=False)


def test_predict_matches_direct_forward(model):
    ds = IdDataset()
    model.train()
    r = predict(model, ds, batch_size=3, progress=False)
    assert model.training  # mode restored
    x = ds.images.float() / 127.5 - 1
    with torch.no_grad():
        logits = model.eval()(x)
    np.testing.assert_allclose(r.logits, logits.numpy(), rtol=1e-4, atol=1e-5)
    assert list(r.ids) == [f"toy:test:{i}" for i in range(10)]
    assert r.class_names == ds.class_names
    np.testing.assert_array_equal(r.predicted, logits.argmax(1).numpy())
    r2 = predict(model, DataLoader(ds, batch_size=4), progress=False, keep_logits=False)
    assert r2.logits is None
    np.testing.assert_array_equal(r2.topk, r.topk)


def test_predict_float_input_and_errors(model):
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    r = predict(model, TensorDataset(x, torch.zeros(6, dtype=torch.long)), progress=False)
    assert list(r.ids) == [str(i) for i in range(6)]
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        predict(model, TensorDataset(x * 255, torch.zeros(6, dtype=torch.long)), progress=False)
    with pytest.raises(ValueError, match="shuffle=False"):
        predict(model, DataLoader(IdDataset(), shuffle=True), progress=False)
    with pytest.raises(ValueError, match="head match"):
        predict(model, TensorDataset(x, torch.full((6,), 7)), progress=False)


def test_extract_features_and_subset_ids(model):
    ds = IdDataset()
    f = extract_features(model, ds, batch_size=4, normalize=True, progress=False)
    assert f.features.shape == (10, model.num_features)
    np.testing.assert_allclose(np.linalg.norm(f.features, axis=1), 1.0, rtol=1e-5)
    sub = torch.utils.data.Subset(ds, [7, 2])
    assert list(example_ids(sub)) == ["toy:test:7", "toy:test:2"]
