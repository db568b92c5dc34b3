"""Checkpoints that survive being killed, resume exactly, and refuse to mix runs.

The released BiT code wrote checkpoints only at evaluation points and could not resume. Here:

- :func:`save` writes a temporary file in the same directory and renames it over the old one.
  A rename is atomic, so a crash (or SIGKILL) mid-write leaves the previous checkpoint intact.
- A checkpoint holds everything the next step depends on: weights, optimizer (momentum) state,
  the step, the data position and every RNG state. Resuming gives the same weights as never
  stopping (tests/test_checkpoint.py kills a run with SIGKILL to prove it).
- Only tensors and plain Python types are stored, so :func:`load` uses
  ``torch.load(weights_only=True)``: a checkpoint cannot run code when loaded.
- :func:`check_compatible` compares what a run *is* (model, data size, hyper-parameters) with the
  checkpoint and says exactly what differs instead of loading the wrong state.
- :func:`preemption_handler` turns SIGTERM / SIGUSR1 (what SLURM and cloud schedulers send before
  killing a job) into a clean stop request: the loop checkpoints and exits normally.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitkit.events import RunControl
from bitkit.fileio import atomic_write

FORMAT = "bitkit-checkpoint-v1"
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1")


class CheckpointMismatch(ValueError):
    """The checkpoint belongs to a different model, dataset or configuration."""


def save(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename)."""
    return atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save` onto the CPU, without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and what to do
        raise ValueError(
            f"{path} is not a readable bitkit checkpoint ({type(e).__name__}: {e}). "
            "Delete it to start over, or point out_dir elsewhere."
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bitkit checkpoint (format {FORMAT} expected)")
    return state


# ------------------------------------------------------------------------------------------------
# Comparing runs
# ------------------------------------------------------------------------------------------------


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointMismatch` listing every field where two run fingerprints differ."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if key == "parameters":
            if a != b:
                diffs.append(_parameter_diff(a, b))
        elif a != b:
            diffs.append(f"{key}: checkpoint {a!r}, this run {b!r}")
    if diffs:
        raise CheckpointMismatch(
            f"checkpoint {path} is from a different run:\n  - " + "\n  - ".join(diffs)
            + "\nUse a new out_dir for a new run, or resume=False to overwrite this one."
        )


def _parameter_diff(a: dict[str, list[int]], b: dict[str, list[int]]) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    shape = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    parts = []
    if only_a:
        parts.append(f"{len(only_a)} only in the checkpoint (e.g. {only_a[0]})")
    if only_b:
        parts.append(f"{len(only_b)} only in this model (e.g. {only_b[0]})")
    if shape:
        k = shape[0]
        parts.append(f"{len(shape)} with other shapes (e.g. {k}: {a[k]} vs {b[k]})")
    return "model parameters differ: " + "; ".join(parts)


def parameter_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """Name -> shape of every entry of the state dict: the model part of a run fingerprint."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# RNG state as tensors (so weights_only loading works)
# ------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), NumPy and Python RNG states, as tensors and plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------
# Preemption
# ------------------------------------------------------------------------------------------------


@contextmanager
def preemption_handler(control: RunControl) -> Iterator[None]:
    """While active, SIGTERM and SIGUSR1 ask ``control`` to stop instead of killing the process.

    The loop notices at the end of the current step, writes a checkpoint and returns, so the
    process exits normally and a requeued job resumes from that step. SLURM: ``#SBATCH
    --signal=USR1@120`` sends SIGUSR1 two minutes before the time limit. Signals can only be
    handled in the main thread; elsewhere (a notebook running fit in a thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum: int, _frame: object) -> None:
        control.request_stop(f"preempted by {signal.Signals(signum).name}")

    for name in PREEMPTION_SIGNALS:
        sig = getattr(signal, name, None)  # SIGUSR1 does not exist on Windows
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
