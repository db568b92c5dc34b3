"""Streaming: tar shards shuffled by shard and buffer, split over workers, corrupt skipped."""

from __future__ import annotations

import datasets
import pytest
import torch
from conftest import world_shards
from torch.utils.data import DataLoader

from bitkit.data import get_card, load, preprocess
from bitkit.data.sources import to_hf
from bitkit.data.streaming import HFStream, ShardStream


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return world_shards(tmp_path_factory.mktemp("shards"), 120, 20, broken_in=0)


def _labels(stream):
    return [int(y) for _, y in stream]


def test_every_example_once_shuffled_by_shard_and_buffer(shards):
    raw = load("world-texture", "train", size=120)
    stream = ShardStream(shards, num_classes=13, buffer_size=30, seed=0)
    first = _labels(stream)
    assert sorted(first) == sorted(raw.targets.tolist()) and len(first) == 120
    assert first != raw.targets.tolist()                     # shuffled
    assert stream.skipped() == 1                             # the broken record
    assert _labels(stream) == first                          # same epoch, same order
    stream.set_epoch(1)
    assert _labels(stream) != first
    ordered = ShardStream(shards, num_classes=13, buffer_size=0)
    assert _labels(ordered) == raw.targets.tolist()          # no shuffle: file order


def test_ranks_and_workers_read_disjoint_shards(shards):
    ranks = [ShardStream(shards, num_classes=13, rank=r, world_size=2) for r in (0, 1)]
    assert not set(ranks[0].my_shards()) & set(ranks[1].my_shards())
    assert len(ranks[0].my_shards()) + len(ranks[1].my_shards()) == len(shards)
    stream = ShardStream(shards, num_classes=13, buffer_size=10)
    loader = DataLoader(stream, batch_size=None, num_workers=2,
                        collate_fn=lambda item: item)
    assert len(list(loader)) == 120
    assert stream.skipped() == 1


def test_missing_shards_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard files match"):
        ShardStream(str(tmp_path / "*.tar"), num_classes=2)
    with pytest.raises(ValueError, match="needs num_classes"):
        ShardStream(str(tmp_path / "*.tar"))


def test_a_truncated_shard_keeps_its_first_records_and_the_stream_goes_on(shards, tmp_path):
    """A copy cut off mid-file (a full disk, an interrupted rsync): the records before the
    cut are read, the shard is counted as broken and named in a warning, the next shard is
    read as usual; a file that is no tar at all is broken from its first byte."""
    cut = tmp_path / "cut.tar"
    data = open(shards[1], "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file at all" * 100)
    stream = ShardStream([str(cut), str(junk), shards[2]], num_classes=13, buffer_size=0)
    with pytest.warns(RuntimeWarning, match="unreadable from here on") as caught:
        labels = _labels(stream)
    assert {str(w.message).split(":")[0] for w in caught} == {str(cut), str(junk)}
    whole = _labels(ShardStream([shards[2]], num_classes=13, buffer_size=0))
    assert 0 < len(labels) - len(whole) < 20 and labels[-len(whole):] == whole
    assert stream.broken_shards() == 2 and stream.skipped() == 0


def test_a_stream_with_a_card_follows_its_flip_and_crop_permissions(tmp_path):
    """A structured task (orientation: a flip changes the label) streamed from shards keeps
    its card's permissions, as a map-style dataset does."""
    card = get_card("world-orientation")
    paths = world_shards(tmp_path, 16, 16, task="world-orientation")
    stream = preprocess(ShardStream(paths, card=card, buffer_size=0), True, resize=36, crop=32)
    assert stream.num_classes == card.num_classes == 8
    assert not card.flip and not stream.transform.flip
    plain = preprocess(ShardStream(paths, num_classes=8, buffer_size=0), True, resize=36,
                       crop=32)
    assert plain.transform.flip  # no card: nothing forbids a flip
    eval_images = [x for x, _ in preprocess(ShardStream(paths, card=card, buffer_size=0), False,
                                            resize=32, crop=32)]
    raw = load("world-orientation", "train", size=16)
    expected = preprocess(raw, False, resize=32, crop=32)
    assert all(torch.equal(a, expected[i][0]) for i, a in enumerate(eval_images))


def test_hf_streaming_from_local_parquet(tmp_path):
    world = load("world-fine", "train", size=60)
    to_hf(world, progress=False).to_parquet(str(tmp_path / "train-0.parquet"))
    card = get_card("world-fine")
    stream = HFStream(card, "train", data_files=str(tmp_path / "train-0.parquet"),
                      buffer_size=16, seed=0)
    labels = _labels(stream)
    assert sorted(labels) == sorted(world.targets.tolist())
    assert labels != world.targets.tolist() and stream.skipped() == 0
    assert isinstance(stream.hf, datasets.IterableDataset)
