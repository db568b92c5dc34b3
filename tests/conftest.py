"""Shared test setup. Tests never reach the network: the hub is offline, data is made locally.

Also shared helpers: the ``one_thread`` fixture, a tiny learnable image dataset
(:class:`Images`) with :func:`write_run`, a run file over it, :func:`world_shards`, tar
shards of the embedded world with one unreadable record, and :func:`random_model`, a model
whose every tensor (head included) is seeded noise, for weight-file round trips. Test modules
import the helpers with ``from conftest import Images, write_run`` (pytest puts ``tests/`` on
``sys.path``).
"""

import io
import json
import os
import tarfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

# Two cores in CI: keep torch from oversubscribing when pytest runs several things.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """Browser tests last: the lessons they run in JupyterLab then find the upstream models the
    papermill runs built in the session's shared cache."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One ``BITKIT_CACHE`` for the session: the lessons (run by papermill or in the browser)
    share the upstream models the first of them pre-trains, as a class does. The kernels
    inherit the variable. ``BITKIT_TEST_CACHE`` reuses a cache across pytest sessions while
    working on one lesson; by default (and in CI) every session starts empty."""
    reuse = os.environ.get("BITKIT_TEST_CACHE")
    cache = Path(reuse) if reuse else tmp_path_factory.mktemp("bitkit-cache")
    old = os.environ.get("BITKIT_CACHE")
    os.environ["BITKIT_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("BITKIT_CACHE", None)
    else:
        os.environ["BITKIT_CACHE"] = old


@pytest.fixture()
def one_thread():
    """One intra-op thread for the test. On two shared cores, one thread per process is ~50x
    faster than two contending. Use it per module: ``pytestmark =
    pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Images(Dataset):
    """Random 16 px images with a learnable label: the class is the brightest colour channel."""

    def __init__(self, n=64, classes=3, seed=0, multi_hot=False):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
        self.y = self.x.mean(dim=(2, 3)).argmax(dim=1) % classes
        self.multi_hot, self.classes = multi_hot, classes

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.multi_hot:
            t = torch.zeros(self.classes)
            t[self.y[i]] = 1.0
            t[(self.y[i] + 1) % self.classes] = 1.0
            return self.x[i], t
        return self.x[i], int(self.y[i])


def random_model(name="R14x0.25", classes=10, **kw):
    """``create(name, num_classes=classes, **kw)`` with every parameter drawn from N(0, 1)
    (seed 0): a zero or default-initialised tensor could hide a tensor a file round trip lost."""
    from bitkit.models import create

    m = create(name, num_classes=classes, **kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


def write_run(tmp_path, name="run", steps=3, data=None, **train_overrides):
    """A run file over a .pt tensor file of :class:`Images` (JSON is YAML); returns its path.

    Only files: a run launched in other processes (``torchrun``) reads them, never this module.
    """
    data = data or Images()
    torch.save({"images": data.x, "labels": data.y}, tmp_path / "train.pt")
    train_cfg = {"batch_size": 8, "progress": False,
                 "schedule": {"base_lr": 0.1, "warmup_steps": 1, "decay_steps": [],
                              "total_steps": steps}, **train_overrides}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({
        "model": "R14x0.25", "train_data": str(tmp_path / "train.pt"),
        "eval_data": str(tmp_path / "train.pt"), "out_dir": str(tmp_path / name),
        "train": train_cfg}))
    return path


def world_shards(root, n, shard_size, broken_in=0, task="world-texture"):
    """``n`` examples of ``task`` written as tar shards of ``shard_size`` under ``root``, plus
    one unreadable record (garbage PNG bytes with a label) appended to shard ``broken_in``."""
    from bitkit.data import load
    from bitkit.data.streaming import write_shards

    paths = write_shards(load(task, "train", size=n), root, shard_size=shard_size,
                         progress=False)
    with tarfile.open(paths[broken_in], "a") as tar:
        for name, payload in (("broken.png", b"\x89PNG garbage"), ("broken.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return paths
