"""Planted near-duplicates between upstream train and downstream test sets, with ground truth.

Supplementary B of the paper asks whether near-duplicates of downstream *test* images inside
the upstream *training* data inflate transfer results (Table 1 there: Full vs Dedup). Here the
answer can be measured exactly, because the pairs are planted and known. Four test sets host
them (``HOSTS``: one natural, one fine-grained, one specialised, one structured task):

- pair ``p`` of a host is one of the host's own pictures, drawn from a key of its own
  (``world-objects``: a natural-like scene from ``(seed, "world-dup", p)``; the others:
  ``(seed, "world-dup/<host>", p)``), so it is an ordinary example of that task;
- the host's *test* split shows it, perturbed, at index ``test_position(p)`` (one of: a shift
  of 1-3 pixels, pixel noise, a colour change, a JPEG re-encode, by ``p % 4``), with its label;
- the upstream *train* split shows it unperturbed at index ``upstream_position(p, n, host)``.
  A ``world-objects`` copy is labelled with the nearest upstream class (same shape and texture),
  as a web copy would be; the others keep the label the upstream drew for that index (a web
  copy carries whatever tag its page gave it).

A host's test set always holds its ``PLANTED`` perturbed pictures; an upstream set of size
``n`` contains the first ``min(PLANTED, n // 10)`` of each host's, so :func:`pairs` depends on
``n``. Near-identical pictures the world draws by chance are not planted: the duplicate search
reports them as look-alikes (``bitkit.dedup``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image

from bitkit.data.cards import get_card
from bitkit.data.world import rng
from bitkit.data.world.registry import build
from bitkit.data.world.render import noise_bank
from bitkit.data.world.scenes import natural_scene
from bitkit.data.world.taxonomy import held_out_combos, nearest_upstream_class

PLANTED = 40            # perturbed copies in the world-objects test split
TEST_SIZE = 1000        # the world-objects test split size the positions are laid out for
NATURAL_CLASSES = 20    # classes of world-objects
HOST, UPSTREAM = "world-objects", "world-upstream"
#: The test sets that host planted pairs (world version 5; version 4 had world-objects only).
HOSTS = ("world-objects", "world-fine", "world-texture", "world-count")
PERTURBATIONS = ("shift", "noise", "colour", "jpeg")


@dataclass(frozen=True)
class DuplicatePair:
    """Ground truth for one planted pair; ids are ``example_id`` strings of the datasets."""

    upstream_id: str
    downstream_id: str
    perturbation: str
    downstream_label: int
    upstream_label: int | None


def test_position(p: int) -> int:
    stride = TEST_SIZE // PLANTED
    return p * stride + stride // 2


def upstream_count(upstream_size: int) -> int:
    return min(PLANTED, upstream_size // 10)


def upstream_position(p: int, upstream_size: int, host: str = HOST) -> int:
    """Each host's copies sit one index apart inside every stride (stride >= 10 > 3 + 4)."""
    stride = upstream_size // upstream_count(upstream_size)
    return p * stride + stride // 3 + HOSTS.index(host)


def _check_host(host: str) -> None:
    if host not in HOSTS:
        raise ValueError(f"{host!r} hosts no planted duplicates; the hosts are {', '.join(HOSTS)}")


@lru_cache(maxsize=16)
def _host_task(host: str, seed: int, size: int):
    return build(get_card(host), "test", seed=seed, image_size=size)


@lru_cache(maxsize=2048)
def _host_pair(host: str, seed: int, p: int, size: int) -> tuple[bytes, int]:
    """Pair ``p`` of a host other than world-objects: (image bytes, label), drawn by the host's
    own generator from the pair's key (index -1: never a planted position)."""
    task = _host_task(host, seed, size)
    keys = rng.keys(seed, f"world-dup/{host}", np.array([p]))
    images, labels = task.draw(keys)
    return images[0].tobytes(), int(labels[0])


def pair_class(seed: int, p: int, host: str = HOST) -> int:
    """The test label of pair ``p`` of ``host``."""
    _check_host(host)
    if host != HOST:
        return _host_pair(host, seed, p, 32)[1]  # labels do not depend on the image size
    return int(rng.integers(rng.keys(seed, "world-dup", np.array([p])), 1, NATURAL_CLASSES)[0, 0])


class Plant(NamedTuple):
    """One planted copy in the upstream train split."""

    host: str
    pair: int
    label: int | None  # the upstream label it carries; None: the index's own label


def upstream_plants(upstream_size: int, seed: int) -> dict[int, Plant]:
    """Upstream index -> :class:`Plant` for an upstream train split of this size."""
    combos = held_out_combos(NATURAL_CLASSES)
    out = {}
    for host in HOSTS:
        for p in range(upstream_count(upstream_size)):
            label = (nearest_upstream_class(*combos[pair_class(seed, p)]) if host == HOST
                     else None)
            out[upstream_position(p, upstream_size, host)] = Plant(host, p, label)
    return out


def test_plants(test_size: int) -> dict[int, int]:
    """world-objects test index -> pair, for a test split of ``test_size`` examples."""
    return {test_position(p): p for p in range(PLANTED) if test_position(p) < test_size}


@lru_cache(maxsize=512)
def _scene(seed: int, p: int, size: int) -> bytes:
    combos = held_out_combos(NATURAL_CLASSES)[[pair_class(seed, p)]]
    return natural_scene(rng.keys(seed, "world-dup", np.array([p])), combos, size)[0].tobytes()


def pair_scene(seed: int, p: int, size: int, host: str = HOST) -> np.ndarray:
    """The unperturbed image of pair ``p`` of ``host``: uint8 (3, S, S), as it appears upstream."""
    _check_host(host)
    raw = _scene(seed, p, size) if host == HOST else _host_pair(host, seed, p, size)[0]
    return np.frombuffer(raw, np.uint8).reshape(3, size, size).copy()


def perturbation(seed: int, p: int, host: str = HOST) -> dict[str, object]:
    """How pair ``p`` of ``host`` is perturbed in the test split: ``{"kind": ...}`` (one of
    ``PERTURBATIONS``, by ``p % 4``) and its drawn parameters: ``dy``/``dx`` (pixels the picture
    moves down/right), ``pattern``/``amplitude`` (which noise pattern, in 0..255 units),
    ``gains`` (per RGB channel) or ``quality`` (JPEG, 30-69)."""
    _check_host(host)
    stream = "world-dup-perturb" if host == HOST else f"world-dup-perturb/{host}"
    u = rng.uniform(rng.keys(seed, stream, np.array([p])), 4)[0]
    kind = PERTURBATIONS[p % 4]
    if kind == "shift":
        return {"kind": kind, "dy": 1 + int(u[0] * 3), "dx": 1 + int(u[1] * 3)}
    if kind == "noise":
        return {"kind": kind, "pattern": int(u[0] * 16), "amplitude": 20.0}
    if kind == "colour":
        return {"kind": kind, "gains": tuple(float(g) for g in 0.8 + 0.4 * u[:3])}
    return {"kind": kind, "quality": 30 + int(u[0] * 40)}


def perturbed_scene(seed: int, p: int, size: int, host: str = HOST) -> np.ndarray:
    """The perturbed image of pair ``p`` of ``host`` as it appears in the host's test split."""
    img = pair_scene(seed, p, size, host).astype(np.float32)
    how = perturbation(seed, p, host)
    if how["kind"] == "shift":
        dy, dx = how["dy"], how["dx"]
        img = np.pad(img, ((0, 0), (dy, 0), (dx, 0)), mode="edge")[:, :size, :size]
    elif how["kind"] == "noise":
        img += noise_bank(size)[how["pattern"]] * how["amplitude"]
    elif how["kind"] == "colour":
        img *= np.asarray(how["gains"], np.float32)[:, None, None]
    else:  # jpeg
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8).transpose(1, 2, 0)).save(buf, "JPEG",
                                                                      quality=how["quality"])
        img = np.asarray(Image.open(buf).convert("RGB"), np.float32).transpose(2, 0, 1)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def pairs(upstream_size: int, *, host: str | None = HOST, seed: int = 0,
          test_size: int = TEST_SIZE, upstream: str = UPSTREAM) -> list[DuplicatePair]:
    """The planted pairs between ``<upstream>:train`` of ``upstream_size`` examples and
    ``<host>:test`` of ``test_size`` examples (same ``seed`` on both sides); ``host=None``: every
    host's. ``upstream`` is the upstream card (``world-upstream-multilabel`` holds the same
    plants). ``upstream_label`` is None where the copy keeps the upstream index's own label."""
    if host is not None:
        _check_host(host)
    test = {p: i for i, p in test_plants(test_size).items()}
    out = []
    for j, plant in sorted(upstream_plants(upstream_size, seed).items()):
        if plant.pair in test and host in (None, plant.host):
            p = plant.pair
            out.append(DuplicatePair(f"{upstream}:train:{j}", f"{plant.host}:test:{test[p]}",
                                     PERTURBATIONS[p % 4], pair_class(seed, p, plant.host),
                                     plant.label))
    return out


def duplicate_of(example_id: str, upstream_size: int, *, seed: int = 0,
                 test_size: int = TEST_SIZE, upstream: str = UPSTREAM) -> str | None:
    """The planted partner of an example id (either side, any host), or ``None``."""
    for pair in pairs(upstream_size, host=None, seed=seed, test_size=test_size,
                      upstream=upstream):
        if example_id == pair.upstream_id:
            return pair.downstream_id
        if example_id == pair.downstream_id:
            return pair.upstream_id
    return None
