"""Data parallelism: process layout, data shards, and DDP == one process (the GroupNorm property)."""

import json

import numpy as np
import pytest
import torch
from conftest import write_run

from bitkit import checkpoint, distributed, runfile
from bitkit.distributed import DistInfo, StepSampler, env_info, shard_indices, slurm_master_addr
from bitkit.models import create

pytestmark = pytest.mark.usefixtures("one_thread")


def test_env_info_reads_torchrun_then_slurm():
    assert env_info({}) == DistInfo(0, 1, 0)
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3",
             "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "16"}  # what srun sets
    assert env_info(torchrun) == DistInfo(5, 8, 1)
    assert env_info(slurm) == DistInfo(3, 16, 3)
    assert env_info({**slurm, **torchrun}) == DistInfo(5, 8, 1)  # torchrun inside sbatch
    # a notebook on a SLURM node (one task) is a single process
    assert env_info({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == DistInfo(0, 1, 0)
    assert DistInfo(0, 2).is_main and not DistInfo(1, 2).is_main


def test_a_kernel_inside_an_sbatch_allocation_is_one_process_not_rank_0_of_n():
    # sbatch --ntasks=4 puts these into the batch script (and a kernel started from it);
    # no srun step: nobody started the other 3 processes, so waiting for them would hang.
    sbatch = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "4", "SLURM_PROCID": "0",
              "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "gpu[1-2]"}
    assert env_info(sbatch) == DistInfo(0, 1, 0)
    assert env_info({**sbatch, "SLURM_STEP_ID": "batch"}) == DistInfo(0, 1, 0)
    # srun --ntasks=1 --pty jupyter ... inside it: a one-task step
    assert env_info({**sbatch, "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1"}) == DistInfo()
    # srun with 4 tasks (old Slurm spells it SLURM_STEPID), or an explicit opt-in
    assert env_info({**sbatch, "SLURM_STEPID": "0", "SLURM_PROCID": "2"}) == DistInfo(2, 4, 0)
    assert env_info({**sbatch, "BITKIT_SLURM_DDP": "1"}) == DistInfo(0, 4, 0)


def test_rendezvous_gives_up_with_a_message_instead_of_hanging(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("BITKIT_DIST_TIMEOUT", "2")
    with pytest.raises(RuntimeError, match=r"rank 0 of 2 could not form the process group at "
                                           rf"127\.0\.0\.1:{port} within 2 s.*were the others "
                                           r"started\?.*BITKIT_DIST_TIMEOUT"):
        distributed.init(backend="gloo")
    assert "RANK" not in __import__("os").environ  # the environment is left as it was


@pytest.mark.parametrize("nodelist, first", [("gpu[003-005,9]", "gpu003"), ("a1,b2", "a1"),
                                             ("node7", "node7"), ("n[12,15]", "n12")])
def test_slurm_master_addr(nodelist, first):
    assert slurm_master_addr(nodelist) == first


def micro_batches(world, split, n=50, batch=8, steps=20, start=0):
    """{step: [indices of rank 0's micro-batches..., rank 1's ...]} flattened per step."""
    per_step = {}
    for rank in range(world):
        s = StepSampler(n, batch, steps, seed=7, start_step=start, rank=rank, world_size=world,
                        batch_split=split)
        chunks = list(s)
        assert len(chunks) == len(s) == (steps - start) * split
        assert all(len(c) == batch // world // split for c in chunks)
        for i, step in enumerate(range(start, steps)):
            per_step.setdefault(step, []).extend(sum(chunks[i * split:(i + 1) * split], []))
    return per_step


def test_each_step_sees_the_same_examples_for_any_world_size_and_split():
    one = micro_batches(1, 1)
    assert micro_batches(2, 1) == one == micro_batches(2, 2) == micro_batches(1, 4)
    s = StepSampler(50, 8, 20, seed=7)
    assert all(one[k] == s.global_batch(k).tolist() for k in one)
    # resuming at step 9 continues the same stream
    assert micro_batches(2, 2, start=9) == {k: v for k, v in one.items() if k >= 9}


def test_the_stream_is_a_new_permutation_every_epoch():
    s = StepSampler(50, 10, 10, seed=3)
    stream = np.concatenate([s.global_batch(k) for k in range(10)])
    epochs = stream.reshape(2, 50)
    assert all(sorted(e) == list(range(50)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    tiny = StepSampler(3, 8, 2, seed=0)  # few-shot: a batch spans several epochs
    assert sorted(tiny.global_batch(0)[:3]) == [0, 1, 2] and len(tiny.global_batch(0)) == 8
    with pytest.raises(ValueError, match="divisible by world_size x batch_split = 3 x 1"):
        StepSampler(10, 8, 1, world_size=3)


def test_eval_shards_cover_the_data_once():
    shards = [shard_indices(11, DistInfo(r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


def test_two_process_ddp_equals_one_process_and_micro_batches(tmp_path):
    """The GroupNorm property the paper relies on (4.3): no batch statistics, so 2 processes with
    4 images each (gloo DDP, gradients averaged), 1 process with all 8, and 1 process with 4
    micro-batches of 2 all take the same SGD steps. No MixUp: its pairs live inside a rank's
    micro-batch, so they differ by construction."""
    kw = dict(steps=4, schedule={"base_lr": 0.1, "warmup_steps": 1, "decay_steps": [2],
                                 "total_steps": 4})
    events = []  # DDP run: 2 ranks x 2 micro-batches x 2 images
    launched = runfile.launch(write_run(tmp_path, "ddp", batch_split=2, **kw), nproc_per_node=2,
                            env={"OMP_NUM_THREADS": "1"})
    runfile.run(write_run(tmp_path, "full", **kw))
    runfile.run(write_run(tmp_path, "split", batch_split=4, **kw))
    assert launched.follow([events.append]) == 0
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3, 4]  # streamed back
    assert events[-1].kind == "end" and events[-1].reason == "done"

    ddp, full, split = (checkpoint.load(tmp_path / name / "checkpoint.pt")["model"]
                        for name in ("ddp", "full", "split"))
    torch.manual_seed(0)  # the run file's seed: the weights before training
    start = create("R14x0.25", num_classes=3).state_dict()
    assert not torch.allclose(full["head.weight"], start["head.weight"])  # it trained
    for name in full:
        torch.testing.assert_close(ddp[name], full[name], rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(split[name], full[name], rtol=1e-4, atol=1e-5, msg=name)


COUNT_ALL_REDUCES = """
import json, sys
import torch, torch.distributed as dist
from bitkit import runfile, train

class CountingDDP(train.DistributedDataParallel):
    calls = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

        def count(state, bucket):
            CountingDDP.calls += 1
            fut = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()), async_op=True)
            return fut.get_future().then(lambda f: f.value()[0])

        self.register_comm_hook(None, count)

train.DistributedDataParallel = CountingDDP
counts = []
for run_file in sys.argv[1:]:
    CountingDDP.calls = 0
    runfile.run(run_file)
    counts.append(CountingDDP.calls)
if dist.get_rank() == 0:
    print("ALLREDUCE_CALLS", json.dumps(counts))
"""


def test_no_gradient_all_reduce_on_accumulation_micro_steps(tmp_path):
    """With batch_split=4 each optimizer step all-reduces once (on the last micro-batch), exactly
    as often as with batch_split=1; without DDP's no_sync it would be 4 times as often."""
    script = tmp_path / "count.py"
    script.write_text(COUNT_ALL_REDUCES)
    one = write_run(tmp_path, "split1", steps=3)
    four = write_run(tmp_path, "split4", steps=3, batch_split=4)
    launched = distributed.torchrun([str(script), str(one), str(four)], nproc_per_node=2,
                                    metrics=tmp_path / "split4" / "metrics.jsonl",
                                    env={"OMP_NUM_THREADS": "1"})
    assert launched.follow() == 0
    line = next(x for x in launched.log.read_text().splitlines() if "ALLREDUCE_CALLS" in x)
    split1_calls, split4_calls = json.loads(line.split("ALLREDUCE_CALLS", 1)[1])
    assert split1_calls >= 3 and split4_calls == split1_calls


EXIT_CHECK = """
import atexit, sys
import torch, torch.distributed as dist
from bitkit import distributed

# registered before init, so it runs after everything init registers (atexit is last-in first-out)
atexit.register(lambda: print(f"rank {dist.get_rank() if dist.is_initialized() else '-'} "
                              f"GROUP_OPEN_AT_EXIT {dist.is_initialized()}", flush=True))
info = distributed.init()
t = torch.ones(8)
distributed.all_reduce_sum(t)
if sys.argv[1] == "fail" and info.rank == 1:
    raise ValueError("rank 1 found a problem")
distributed.barrier()
"""


def test_a_job_closes_its_process_group_before_it_exits(tmp_path):
    """A gloo group left open at exit makes about one exit in five abort (SIGABRT) once the work
    is done, failing the whole job; init() closes it at exit for every script that uses bitkit."""
    script = tmp_path / "exit_check.py"
    script.write_text(EXIT_CHECK)
    launched = distributed.torchrun([str(script), "ok"], nproc_per_node=2,
                                    metrics=tmp_path / "metrics.jsonl", env={"OMP_NUM_THREADS": "1"})
    assert launched.follow() == 0
    log = launched.log.read_text()
    assert log.count("GROUP_OPEN_AT_EXIT False") == 2 and "GROUP_OPEN_AT_EXIT True" not in log


def test_a_failed_job_reports_the_ranks_own_error_not_only_torchruns_traceback(tmp_path):
    script = tmp_path / "exit_check.py"
    script.write_text(EXIT_CHECK)
    launched = distributed.torchrun([str(script), "fail"], nproc_per_node=2,
                                    metrics=tmp_path / "metrics.jsonl", env={"OMP_NUM_THREADS": "1"})
    with pytest.raises(RuntimeError) as failed:
        launched.follow()
    message = str(failed.value)
    assert "exited with code 1" in message and str(launched.log) in message
    assert "ValueError: rank 1 found a problem" in message  # the rank's own traceback
    assert "torchrun's root cause:" in message and "exitcode  : 1" in message
    assert "torch/distributed/run.py" not in message  # not torchrun's traceback of itself


def test_epoch_cache_holds_two_permutations_and_small_datasets_stay_exact():
    from bitkit.distributed import _epoch_order

    assert _epoch_order.cache_info().maxsize == 2  # 14M-entry permutations: not 8 of them
    big = StepSampler(100, 30, 50, seed=3)
    for step in range(50):
        batch = big.global_batch(step)
        pos = np.arange(step * 30, (step + 1) * 30)
        expect = [np.random.default_rng([3, p // 100]).permutation(100)[p % 100] for p in pos]
        assert batch.tolist() == expect
    # n < batch: one batch spans several epochs, each a full permutation of its own
    small = StepSampler(3, 8, 4, seed=1)
    stream = np.concatenate([np.random.default_rng([1, e]).permutation(3) for e in range(11)])
    for step in range(4):
        assert small.global_batch(step).tolist() == stream[step * 8:(step + 1) * 8].tolist()

