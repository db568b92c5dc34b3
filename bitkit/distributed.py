"""Data-parallel training: who am I, which data is mine, and launching N processes from a notebook.

BiT trained upstream on 512 TPU chips with 8 images each (paper 3.3). That only works because
GroupNorm and Weight Standardization use no batch statistics (paper 4.3): the gradient of a batch
split over 2 processes, or over 4 micro-batches on one, is the gradient of the whole batch. So the
same ``fit`` runs in a notebook kernel and under ``torchrun`` on many nodes, and this module holds
everything that differs:

- :func:`env_info` reads the process layout from torchrun's variables, or SLURM's (``srun``).
- :func:`init` starts the process group: NCCL on GPUs, gloo on CPUs.
- :class:`StepSampler` gives each rank its share of each global batch, as a function of
  (seed, step) only, so resuming at a step needs no other state.
- :func:`torchrun` starts ``python -m torch.distributed.run`` from a notebook and streams the
  run's events back from its ``metrics.jsonl``.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from bitkit.events import Event, Observer


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, shows progress and writes checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


#: Set to 1 to treat SLURM's variables as the process layout even without srun's step variables
#: (a launcher that starts one task per GPU some other way).
SLURM_OPT_IN = "BITKIT_SLURM_DDP"
#: Seconds :func:`init` waits for every process to join before failing with a message.
TIMEOUT_ENV = "BITKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600
# Step ids that are not an srun step: the batch script itself and the extern step.
_NOT_SRUN_STEPS = {"batch", "extern", "interactive", "4294967291", "4294967292", "4294967293",
                   "4294967294", "4294967295"}


def _srun_tasks(env: Mapping[str, str]) -> int:
    """Tasks of the srun step this process belongs to; 1 when srun did not start it.

    ``sbatch --ntasks=N`` puts SLURM_NTASKS=N (and SLURM_PROCID=0) into the batch script's
    environment, so a Jupyter kernel started from it looks like rank 0 of N and would wait
    forever for N-1 processes that nobody started. Only ``srun`` sets a step id
    (SLURM_STEP_ID / SLURM_STEPID) and the step's own task count, so those are the evidence.
    """
    if env.get(SLURM_OPT_IN, "") == "1":
        return int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS", "1"))
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
    if step is None or step.lower() in _NOT_SRUN_STEPS:
        return 1
    return int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS", "1"))


def env_info(environ: Mapping[str, str] | None = None) -> DistInfo:
    """The process layout from the environment.

    torchrun sets RANK / WORLD_SIZE / LOCAL_RANK. Without it, SLURM's SLURM_PROCID /
    SLURM_STEP_NUM_TASKS / SLURM_LOCALID describe a job started with one ``srun`` task per GPU,
    but only when srun started this process (a step id is set): a notebook kernel inside an
    ``sbatch --ntasks=N`` allocation is one process (``BITKIT_SLURM_DDP=1`` overrides).
    Neither: one process.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    tasks = _srun_tasks(env)
    if tasks > 1 and "SLURM_PROCID" in env:
        return DistInfo(int(env["SLURM_PROCID"]), tasks, int(env.get("SLURM_LOCALID", 0)))
    return DistInfo()


def slurm_master_addr(nodelist: str) -> str:
    """First host of a SLURM node list: "gpu[003-005,9]" -> "gpu003", "a1,b2" -> "a1"."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot read a host name from SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = m.groups()
    if not ranges:
        return prefix
    return prefix + re.split(r"[-,]", ranges)[0]


def init(backend: str | None = None) -> DistInfo:
    """Join the process group when the environment describes more than one process.

    Idempotent: a second call (or a group created by the caller) is reused. Under SLURM without
    torchrun, MASTER_ADDR defaults to the first node of the job and MASTER_PORT to one derived
    from the job id, so ``srun python -m bitkit train --config run.yaml`` works as is.
    """
    info = env_info()
    if not info.is_distributed or dist.is_initialized():
        return info
    source = ("RANK/WORLD_SIZE, as torchrun sets them" if "RANK" in os.environ
              else "SLURM's srun step variables")
    before = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    if "MASTER_ADDR" not in os.environ and "SLURM_JOB_NODELIST" in os.environ:
        os.environ["MASTER_ADDR"] = slurm_master_addr(os.environ["SLURM_JOB_NODELIST"])
    if "MASTER_PORT" not in os.environ and "SLURM_JOB_ID" in os.environ:
        os.environ["MASTER_PORT"] = str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000)
    os.environ.setdefault("RANK", str(info.rank))
    os.environ.setdefault("WORLD_SIZE", str(info.world_size))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(_local_gpu(info))
    timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    try:
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"),
                                timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, TimeoutError, ValueError) as e:  # DistStoreError is a RuntimeError
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        for k, v in before.items():  # leave the environment as it was (a notebook retries)
            if v is None:
                os.environ.pop(k, None)
        raise RuntimeError(
            f"rank {info.rank} of {info.world_size} could not form the process group at {where} "
            f"within {timeout:g} s ({type(e).__name__}: {e}). The environment says this is one "
            f"of {info.world_size} processes ({source}); were the others started? "
            "Start them with torchrun or srun (one task per GPU). In a notebook that should "
            "train alone, unset RANK/WORLD_SIZE. Slow nodes: raise "
            f"{TIMEOUT_ENV} (seconds)."
        ) from e
    # A process that exits with its gloo group still open aborts now and then ("terminate called
    # without an active exception", about 1 exit in 5 here) when its peer exits first: the
    # whole job then fails after its work is done. `bitkit train` shuts down itself; this covers
    # every other script that trains through bitkit under torchrun.
    atexit.register(shutdown)
    return info



def _local_gpu(info: DistInfo) -> int:
    # torchrun shows each process every GPU of the node; `srun --gpus-per-task=1` shows one.
    return info.local_rank % torch.cuda.device_count()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(info: DistInfo, requested: str = "auto") -> torch.device:
    """"auto": this rank's GPU when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda", _local_gpu(info)) if torch.cuda.is_available() else (
            torch.device("cpu"))
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was asked for but CUDA is not available; "
                         "use device='auto' or 'cpu'")
    return device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (small things only: RNG states), in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ------------------------------------------------------------------------------------------------
# Which examples each rank sees
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded order of epoch ``epoch``; cached because every step reads it.

    Two entries: a batch of B <= n examples spans at most 2 consecutive epochs, and steps move
    forward, so the current and the next epoch are all that is ever re-read. At ImageNet-21k
    size one permutation is 14M entries; int32 halves it (56 MB each, not 0.9 GB for 8 int64).
    When n < B a batch spans more epochs; their permutations are then tiny and recomputing
    them costs nothing, so the small cache is still correct, just not hit.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm.astype(np.int32) if n < 2**31 else perm


class StepSampler(Sampler[list[int]]):
    """This rank's micro-batches of indices, optimizer step after optimizer step.

    The data is one endless stream: a seeded permutation of the dataset per epoch, back to back.
    Global batch ``s`` is stream positions ``[s*B, (s+1)*B)``; rank ``r`` takes the ``r``-th
    contiguous slice of it and cuts that into ``batch_split`` micro-batches. So the examples of a
    step depend only on (seed, step): not on the world size, not on ``batch_split``, not on
    whether the run was resumed. The "data position" in a checkpoint is just the step.
    """

    def __init__(self, dataset_size: int, batch_size: int, total_steps: int, *, seed: int = 0,
                 start_step: int = 0, rank: int = 0, world_size: int = 1,
                 batch_split: int = 1) -> None:
        if dataset_size < 1:
            raise ValueError("the training dataset is empty")
        if batch_size % (world_size * batch_split):
            raise ValueError(
                f"batch_size {batch_size} must be divisible by world_size x batch_split = "
                f"{world_size} x {batch_split}: every process and micro-batch gets an equal share"
            )
        self.n, self.batch_size, self.total_steps = dataset_size, batch_size, total_steps
        self.seed, self.start_step = seed, start_step
        self.rank, self.world_size, self.batch_split = rank, world_size, batch_split

    def global_batch(self, step: int) -> np.ndarray:
        """Indices of the whole batch of optimizer step ``step`` (all ranks, all micro-batches)."""
        start, end = step * self.batch_size, (step + 1) * self.batch_size
        parts, pos = [], start
        while pos < end:  # a batch may span epochs (few-shot sets are smaller than a batch)
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, end - pos)
            parts.append(_epoch_order(self.n, self.seed, epoch)[offset:offset + take])
            pos += take
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.world_size
        micro = per_rank // self.batch_split
        for step in range(self.start_step, self.total_steps):
            mine = self.global_batch(step)[self.rank * per_rank:(self.rank + 1) * per_rank]
            for k in range(self.batch_split):
                yield mine[k * micro:(k + 1) * micro].tolist()

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.batch_split

    def state_dict(self) -> dict[str, int]:
        return {"dataset_size": self.n, "batch_size": self.batch_size, "seed": self.seed}


def shard_indices(n: int, info: DistInfo) -> list[int]:
    """Evaluation shard of this rank: every ``world_size``-th example, nothing repeated."""
    return list(range(info.rank, n, info.world_size))


# ------------------------------------------------------------------------------------------------
# Launching from a notebook
# ------------------------------------------------------------------------------------------------


class Launched:
    """A running ``torchrun`` job whose events are read back from its ``metrics.jsonl``."""

    def __init__(self, process: subprocess.Popen, metrics: Path, log: Path, started: float):
        self.process, self.metrics, self.log, self.started = process, metrics, log, started

    def events(self, poll_s: float = 0.2) -> Iterator[Event]:
        """Events of this run as they are written, until the job exits.

        Records from an earlier run in the same directory are skipped: reading starts at the
        first ``start`` event written after the launch.
        """
        offset, inode, seen_start, buffer = 0, None, False, ""
        while True:
            finished = self.process.poll() is not None
            if self.metrics.exists():
                with self.metrics.open() as f:
                    if os.fstat(f.fileno()).st_ino != inode:  # new or rewritten (resumed run)
                        offset, inode, buffer = 0, os.fstat(f.fileno()).st_ino, ""
                    f.seek(offset)
                    buffer += f.read()
                    offset = f.tell()
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    record = json.loads(line)
                    if record["kind"] == "start" and record["time"] >= self.started:
                        seen_start = True
                    if seen_start:
                        yield Event.from_dict(record)
            if finished:
                return
            time.sleep(poll_s)

    def follow(self, observers: Sequence[Observer] = (), poll_s: float = 0.2) -> int:
        """Call ``observers`` with every event until the job ends; raise if it failed."""
        for event in self.events(poll_s):
            for observer in observers:
                observer(event)
        code = self.process.wait()
        if code != 0:
            raise RuntimeError(f"the launched job exited with code {code} ({self.log} has all "
                               f"its output).\n{failure_summary(self.log.read_text(errors='replace'))}")
        return code

    def stop(self) -> None:
        """Preempt the job: torchrun forwards SIGTERM, each rank checkpoints and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


# torchrun's own report of a failed job starts with a line like
# "E1202 16:54:33.168000 6849 .../elastic/multiprocessing/api.py:1002] failed (exitcode: -6) ..."
_AGENT_FAILED = re.compile(r"^[EW]\d{4} .*elastic/multiprocessing/api\.py:\d+\] failed \(exitcode")
_AGENT_NOTE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ \d+ .*torch/distributed/")


def failure_summary(log: str, lines: int = 30) -> str:
    """What a failed job's log says about why: the ranks' own last lines, then torchrun's root cause.

    The tail of the log alone is torchrun's traceback of itself; the rank's real error (a Python
    traceback, or a C++ "terminate called ..." before a SIGABRT) comes before it.
    """
    text = log.splitlines()
    cut = next((i for i, line in enumerate(text) if _AGENT_FAILED.match(line)), None)
    if cut is None:  # not torchrun's failure report (killed, or torchrun itself failed)
        return "\n".join(["last lines of the output:", *text[-lines:]])
    ranks = [line for line in text[:cut] if not _AGENT_NOTE.match(line)][-lines:]
    out = ["last lines of the ranks' output:", *(ranks or ["(none)"])]
    marker = "Root Cause (first observed failure):"
    if marker in text:
        out += ["torchrun's root cause:", *(line for line in text[text.index(marker) + 1:]
                                            if line.strip() and not line.startswith("="))]
    return "\n".join(out)


def torchrun(args: Sequence[str], *, metrics: str | os.PathLike, nproc_per_node: int = 2,
             log: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
             torchrun_args: Sequence[str] = ()) -> Launched:
    """Start ``python -m torch.distributed.run --standalone --nproc-per-node N <args>``.

    ``args`` is what follows, e.g. ``["-m", "bitkit", "train", "--config", "run.yaml"]``;
    ``metrics`` is the ``metrics.jsonl`` rank 0 will write. Output goes to ``log`` (default:
    next to ``metrics``) rather than a pipe, so a chatty job never blocks on a full buffer.
    """
    metrics = Path(metrics)
    log = Path(log) if log else metrics.with_name("launch.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc_per_node}", *torchrun_args, *args]
    started = time.time()
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    return Launched(process, metrics, log, started)
