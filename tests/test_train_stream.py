"""fit on streams: tar shards (and HF streaming) through preprocess_stream, epochs, resume.

A stream has no len() and no indexing, so fit reads it in micro-batches epoch after epoch
(set_epoch), records (epoch, micro-batches consumed) in the checkpoint and resumes at the next
epoch's fresh shuffle (the WebDataset convention; map-style data resumes exactly).
"""

from __future__ import annotations

import pytest
import torch
from conftest import world_shards
from torch.utils.data import IterableDataset

from bitkit import checkpoint, train
from bitkit.data import get_card, load
from bitkit.data.corrupt import UnreadableImagesWarning
from bitkit.data.sources import to_hf
from bitkit.data.streaming import HFStream, ShardStream, write_shards
from bitkit.data.transforms import PreprocessedStream, preprocess, preprocess_stream
from bitkit.distributed import DistInfo
from bitkit.events import RunControl
from bitkit.hyperrule import Schedule
from bitkit.models import create
from bitkit.train import TrainConfig, fit

N, SHARD, CLASSES = 96, 16, 13  # world-texture: 13 classes; 6 shards of 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return world_shards(tmp_path_factory.mktemp("shards"), N, SHARD, broken_in=2)


class EpochLog(ShardStream):
    """A ShardStream that records the epochs fit starts."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)
        super().set_epoch(epoch)


def _stream(shards, **kw):
    raw = EpochLog(shards, num_classes=CLASSES, buffer_size=16, seed=0)
    return raw, preprocess_stream(raw, True, resize=20, crop=16, **kw)


def _config(steps, **kw):
    return TrainConfig(Schedule(0.05, 1, (), steps), **{
        "batch_size": 16, "batch_split": 2, "progress": False, **kw})


def _model(classes=CLASSES):
    torch.manual_seed(0)
    return create("R14x0.25", num_classes=classes)


class Steps:
    def __init__(self, control=None, stop_at=None):
        self.steps, self.control, self.stop_at = [], control, stop_at

    def __call__(self, event):
        if event.kind == "step":
            self.steps.append(event.step)
            if event.step == self.stop_at:
                self.control.request_stop("test")


def test_fit_trains_on_a_stream_across_epochs_and_resumes_at_the_next_epoch(shards, tmp_path):
    # 96 readable examples (and one broken record) = 12 micro-batches of 8 = 6 steps per epoch.
    raw, stream = _stream(shards)
    control = RunControl()
    first = Steps(control, stop_at=7)
    model = _model()
    before = model.head.weight.detach().clone()
    with pytest.warns(UnreadableImagesWarning, match="skipped 1 unreadable image"):
        result = fit(model, stream, _config(10), out_dir=tmp_path, observers=[first],
                     control=control)
    assert result.step == 7 and result.reason.startswith("stopped")
    assert first.steps == list(range(1, 8))
    assert raw.epochs == [0, 1]                      # epoch 0 ran out, restarted with a new shuffle
    assert not torch.equal(model.head.weight, before)
    state = checkpoint.load(tmp_path / train.CHECKPOINT_FILE)
    assert state["data"] == {"stream_epochs": [1], "stream_batches": [14 - 12], "step": 7}
    assert state["identity"]["dataset_size"] == "stream of 6 shards"
    assert result.corrupt.count == 1 and "skipped 1 unreadable image(s)" in str(result.corrupt)

    raw2, stream2 = _stream(shards)
    resumed = Steps()
    with pytest.warns(UnreadableImagesWarning, match="skipped 1 unreadable image"):
        result = fit(_model(), stream2, _config(10), out_dir=tmp_path, observers=[resumed])
    assert result.step == 10 and resumed.steps == [8, 9, 10]
    assert raw2.epochs == [2]                         # the next epoch, a fresh shuffle
    state = checkpoint.load(tmp_path / train.CHECKPOINT_FILE)
    assert state["data"]["stream_epochs"] == [2] and state["data"]["stream_batches"] == [6]


def test_same_seed_same_weights_on_a_stream(shards):
    def run(seed):
        _, stream = _stream(shards, seed=seed)
        model = _model()
        with pytest.warns(UnreadableImagesWarning):  # the shards hold one broken record
            fit(model, stream, _config(2))
        return model.head.weight.detach().clone(), model.stem.conv.weight.detach().clone()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])               # another augmentation seed, other crops


def test_stream_augmentation_is_a_function_of_seed_epoch_and_position(shards):
    raw = ShardStream(shards, num_classes=CLASSES, buffer_size=0)  # file order: comparable
    stream = preprocess_stream(raw, True, resize=24, crop=16, chunk=8)
    first = list(stream)
    again = list(stream)
    assert len(first) == N and all(x.shape == (3, 16, 16) for x, _ in first)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(first, again, strict=True))
    assert [t for _, t in first] == load("world-texture", "train", size=N).targets.tolist()
    stream.set_epoch(1)
    assert raw.epoch == 1                            # set_epoch reaches the raw stream
    other = list(stream)
    assert [t for _, t in other] == [t for _, t in first]
    assert sum(not torch.equal(x, y) for (x, _), (y, _) in zip(first, other, strict=True)) > N // 2
    reseeded = preprocess_stream(raw, True, resize=24, crop=16, chunk=8, seed=1)
    assert not torch.equal(torch.stack([x for x, _ in reseeded]), torch.stack([x for x, _ in other]))
    assert isinstance(preprocess(raw, True, resize=24, crop=16), PreprocessedStream)


def test_multi_label_shards_train_with_sigmoid_cross_entropy(tmp_path, monkeypatch):
    world = load("world-upstream-multilabel", "train", size=32)
    paths = write_shards(world, tmp_path, shard_size=8, progress=False)
    raw = ShardStream(paths, num_classes=world.num_classes, buffer_size=8)
    kinds = []
    real = train.classification_loss

    def spy(logits, target, kind):
        kinds.append((kind, tuple(target.shape)))
        return real(logits, target, kind)

    monkeypatch.setattr(train, "classification_loss", spy)
    result = fit(_model(world.num_classes), preprocess_stream(raw, True, resize=20, crop=16),
                 _config(2, batch_size=8, batch_split=1))
    assert result.step == 2
    assert kinds == [("sigmoid", (8, world.num_classes))] * 2


def test_hf_stream_gives_multi_hot_targets_and_can_be_resharded(tmp_path):
    world = load("world-upstream-multilabel", "train", size=24)
    to_hf(world, progress=False).to_parquet(str(tmp_path / "train-0.parquet"))
    card = get_card("world-upstream-multilabel")
    stream = HFStream(card, "train", data_files=str(tmp_path / "train-0.parquet"), buffer_size=0)
    items = list(stream)
    assert all(t.dtype == torch.float32 and t.shape == (728,) for _, t in items)
    assert torch.equal(torch.stack([t for _, t in items]),
                       torch.from_numpy(world.targets).float())
    halves = []
    for rank in (0, 1):  # what fit does under DDP: set rank/world_size before iterating
        stream.rank, stream.world_size = rank, 2
        halves.append(list(stream))
    assert len(halves[0]) + len(halves[1]) == 24 and len(halves[0]) == 12
    got = torch.stack([t for _, t in halves[0] + halves[1]])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, world.targets.astype(float)
                                                          .tolist()))


def test_streams_are_sharded_by_fit_and_too_few_shards_is_a_clear_error(shards):
    raw, stream = _stream(shards)
    train._shard_stream(stream, DistInfo(rank=1, world_size=2), workers=2)  # 6 >= 2 x 2
    assert (raw.rank, raw.world_size) == (1, 2) and (stream.rank, stream.world_size) == (1, 2)
    mine = [raw.my_shards()]
    raw.rank = 0
    mine.append(raw.my_shards())
    assert sorted(mine[0] + mine[1]) == sorted(map(str, shards))
    with pytest.raises(ValueError, match=r"6 shard\(s\) for 2 process\(es\) x 4 DataLoader "
                                         r"worker\(s\) = 8 readers.*fewer DataLoader workers"):
        train._shard_stream(stream, DistInfo(rank=0, world_size=2), workers=4)
    few = ShardStream(shards[:3], num_classes=CLASSES, rank=0, world_size=4)
    with pytest.raises(ValueError, match=r"3 shard\(s\) for 4 process\(es\)"):
        few.my_shards()

    class Plain(IterableDataset):
        def __iter__(self):
            yield torch.zeros(3, 8, 8), 0

    train._shard_stream(Plain(), DistInfo(), workers=0)  # one process: nothing to shard
    with pytest.raises(ValueError, match="cannot be sharded across the 2 processes"):
        train._shard_stream(Plain(), DistInfo(rank=0, world_size=2), workers=0)


def test_stream_user_mistakes_are_clear(shards):
    tiny = preprocess_stream(ShardStream(shards[:1], num_classes=CLASSES), True, resize=20,
                             crop=16)
    with pytest.raises(ValueError, match="gave no micro-batch of 32 examples in epoch 0"):
        fit(_model(), tiny, _config(2, batch_size=32, batch_split=1))
    raw = ShardStream(shards, num_classes=CLASSES)
    with pytest.raises(ValueError, match="Wrap a raw stream with .*preprocess_stream"):
        fit(_model(), raw, _config(2))
    with pytest.raises(ValueError, match="eval_data must be a map-style dataset"):
        fit(_model(), preprocess_stream(raw, True, resize=20, crop=16), _config(2),
            eval_data=preprocess_stream(raw, False, resize=20, crop=16))
