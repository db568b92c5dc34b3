"""Random augmentation under fit: a function of what is loaded, not of a worker's RNG.

DataLoader workers start from the same RNG state on every DDP rank and again after a resume, so
crops drawn from it would be the same on every rank and replay from step 0 after a restart.
"""

import pytest
import torch
from torch.utils.data import DataLoader

from bitkit import data, train
from bitkit.distributed import StepSampler
from bitkit.hyperrule import Schedule
from bitkit.models import create
from bitkit.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _train_set():
    raw = data.SubsetDataset(data.load("world-objects", "train"), range(48))
    assert raw.card.flip and raw.card.crop  # random crop + flip are on
    return data.preprocess(raw, train=True, resize=20, crop=16)


def _config(**kw):
    kw.setdefault("num_workers", 2)
    return TrainConfig(Schedule(0.1, 1, (), 6), batch_size=8, progress=False, **kw)


def _model():
    torch.manual_seed(0)
    return create("R14x0.25", num_classes=data.load("world-objects", "train").num_classes)


def test_stop_and_resume_with_workers_equals_an_uninterrupted_run(tmp_path):
    ref = _model()
    fit(ref, _train_set(), _config())

    def stop_at_3(event):
        if event.kind == "step" and event.step == 3:
            event.request_stop("test")

    resumed = _model()
    first = fit(resumed, _train_set(), _config(), out_dir=tmp_path, observers=[stop_at_3])
    assert first.step == 3
    resumed = _model()  # a fresh process would start from scratch weights too
    assert fit(resumed, _train_set(), _config(), out_dir=tmp_path).step == 6
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _rank_batches(ds, rank, workers):
    sampler = StepSampler(len(ds), 16, 3, seed=0, rank=rank, world_size=2)
    cfg = _config(num_workers=workers)
    return [x for x, _ in train._loader(ds, cfg, torch.device("cpu"), batch_sampler=sampler)]


def test_ranks_get_different_augmentations_and_workers_do_not_matter():
    raw = data.SubsetDataset(data.load("world-objects", "train"), [5] * 32)  # one image, 32x
    ds = data.preprocess(raw, train=True, resize=20, crop=16)
    rank0, rank1 = _rank_batches(ds, 0, 2), _rank_batches(ds, 1, 2)
    # The same image everywhere: any difference between the ranks is augmentation.
    for a, b in zip(rank0, rank1, strict=True):
        assert not torch.equal(a, b)
    for a, b in zip(rank0, _rank_batches(ds, 0, 0), strict=True):
        assert torch.equal(a, b)  # no workers, 2 workers: the same crops
    assert not torch.equal(rank0[0], rank0[1])  # and steps differ from each other


def test_the_batched_path_is_what_the_loader_calls(monkeypatch):
    ds = _train_set()
    calls = []
    real = type(ds).__getitems__
    monkeypatch.setattr(type(ds), "__getitems__", lambda self, idx: calls.append(idx) or
                        real(self, idx))
    sampler = StepSampler(len(ds), 8, 2, seed=0)
    list(DataLoader(ds, batch_sampler=sampler))
    assert calls == [sampler.global_batch(0).tolist(), sampler.global_batch(1).tolist()]
