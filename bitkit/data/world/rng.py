"""Counter-based random numbers: every draw is a pure function of (seed, stream, index, slot).

Why not ``np.random.default_rng(seed)``? A sequential generator makes image ``i`` depend on how
many numbers images ``0..i-1`` consumed, so a 10M-image world could not be sampled at random
indices, split across DataLoader workers, or grown without changing earlier images. Hashing the
coordinates (a SplitMix64 finaliser, Steele et al. 2014) gives the same number for the same
(seed, index) in any batch, in any process, at any world size: the embedded data costs no disk.
"""

from __future__ import annotations

import zlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijection on uint64 with good avalanche."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def stream_id(name: str) -> int:
    """A stable integer for a stream name (``"upstream/train"``, ``"dup"``); crc32 is stable."""
    return zlib.crc32(name.encode())


def keys(seed: int, stream: str, index: np.ndarray) -> np.ndarray:
    """One uint64 key per index: all randomness of an example derives from it."""
    with np.errstate(over="ignore"):
        base = _mix(np.asarray([seed], dtype=np.uint64) * _GOLDEN + np.uint64(stream_id(stream)))
        idx = np.asarray(index, dtype=np.int64).astype(np.uint64)
        return _mix(base ^ _mix(idx + _GOLDEN))


def uniform(key: np.ndarray, n: int, salt: int = 0) -> np.ndarray:
    """``(len(key), n)`` uniforms in [0, 1) (float64) from per-example keys."""
    with np.errstate(over="ignore"):
        slots = _mix(np.arange(n, dtype=np.uint64) + np.uint64(salt) * _GOLDEN + _GOLDEN)
        h = _mix(np.asarray(key, dtype=np.uint64)[:, None] ^ slots[None, :])
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def integers(key: np.ndarray, n: int, high: int | np.ndarray, salt: int = 0) -> np.ndarray:
    """``(len(key), n)`` integers in ``[0, high)``; ``high`` may vary per example."""
    u = uniform(key, n, salt)
    high = np.asarray(high)
    if high.ndim == 1:
        high = high[:, None]
    return np.minimum((u * high).astype(np.int64), high - 1)
