"""Streaming: tar shards shuffled by shard and buffer, split over workers, corrupt skipped."""

from __future__ import annotations

import io
import tarfile

import datasets
import pytest
from torch.utils.data import DataLoader

from bitkit.data import get_card, load
from bitkit.data.sources import to_hf
from bitkit.data.streaming import HFStream, ShardStream, write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    paths = write_shards(load("world-texture", "train", size=120), root, shard_size=20,
                         progress=False)
    with tarfile.open(paths[0], "a") as tar:  # one corrupt record in the first shard
        for name, data in (("broken.png", b"\x89PNG garbage"), ("broken.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return paths


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
