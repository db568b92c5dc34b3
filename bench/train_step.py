"""Steps/s of ``bitkit.train.fit`` against a bare hand-written loop, same model, data and run.

The bare loop is the least a training loop can do: set the lr, forward, cross-entropy, backward,
SGD step. ``fit`` adds the schedule lookup, micro-batch bookkeeping, the seeded step sampler, a
loss read-back and a step event every step (``log_every=1``), the NaN check and stop handling.
The ratio ``fit / bare`` (seconds per step) is the price of all that; the target is <= 1.05.

Timing starts after ``--warmup`` steps (allocator, cuDNN autotuning, torch.compile) and the two
loops alternate ``--repeats`` times; the median is reported. On a GPU the script also compares
channels_last and torch.compile for ``fit`` so their defaults can be chosen from numbers.

    python bench/train_step.py                          # CPU, teaching model at 32 px
    python bench/train_step.py --model R50x1 --image-size 128 --batch 64   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bitkit.hyperrule import Schedule
from bitkit.models import create
from bitkit.train import TrainConfig, fit


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model, data, schedule, batch, device, warmup, *, bf16, channels_last,
              compile_) -> float:
    """Seconds per step of a minimal loop, after ``warmup`` steps."""
    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                        pin_memory=device.type == "cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    net = torch.compile(model) if compile_ else model
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda"
           else nullcontext())
    model.train()
    step, t0 = 0, 0.0
    while step < schedule.total_steps:
        for x, y in loader:
            if step == warmup:
                _sync(device)
                t0 = time.perf_counter()
            if step == schedule.total_steps:
                break
            for g in opt.param_groups:
                g["lr"] = schedule.lr(step)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with amp:
                loss = F.cross_entropy(net(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
    _sync(device)
    return (time.perf_counter() - t0) / (schedule.total_steps - warmup)


def fit_loop(model, data, schedule, batch, device, warmup, **options) -> float:
    """Seconds per step of ``fit``, timed between its step events (each one syncs the device)."""
    marks = {}

    def clock(event):
        if event.kind == "step" and event.step in (warmup, schedule.total_steps):
            marks[event.step] = time.perf_counter()

    config = TrainConfig(schedule, batch_size=batch, progress=False, device=str(device),
                         num_workers=0, **options)
    fit(model, data, config, observers=[clock])
    return (marks[schedule.total_steps] - marks[warmup]) / (schedule.total_steps - warmup)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="R14x0.25")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=40, help="steps per timed run, incl. warm-up")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n = args.batch * 8
    data = TensorDataset(torch.rand(n, 3, args.image_size, args.image_size, generator=g) * 2 - 1,
                         torch.randint(0, 10, (n,), generator=g))
    schedule = Schedule(0.003, 1, (), args.steps)
    variants = {"default": dict(bf16=True, channels_last=False, compile_=False)}
    if device.type == "cuda":
        variants["channels_last"] = dict(bf16=True, channels_last=True, compile_=False)
        variants["compile"] = dict(bf16=True, channels_last=False, compile_=True)
        variants["channels_last+compile"] = dict(bf16=True, channels_last=True, compile_=True)

    print(f"{args.model} at {args.image_size} px, batch {args.batch}, {args.steps} steps "
          f"({args.warmup} warm-up), {args.repeats} repeats, device {device} "
          f"({torch.get_num_threads()} CPU threads), torch {torch.__version__}")
    print(f"{'variant':<24}{'bare steps/s':>14}{'fit steps/s':>14}{'fit/bare time':>16}")
    for name, v in variants.items():
        bare, ours = [], []
        for _ in range(args.repeats):  # alternate so drifting machine load hits both alike
            torch.manual_seed(0)
            m = create(args.model, num_classes=10).to(device)
            if v["channels_last"]:
                m.to(memory_format=torch.channels_last)
            bare.append(bare_loop(m, data, schedule, args.batch, device, args.warmup,
                                  bf16=v["bf16"], channels_last=v["channels_last"],
                                  compile_=v["compile_"]))
            torch.manual_seed(0)
            m = create(args.model, num_classes=10)
            ours.append(fit_loop(m, data, schedule, args.batch, device, args.warmup,
                                 bf16=v["bf16"], channels_last=v["channels_last"],
                                 compile=v["compile_"]))
        b, f = statistics.median(bare), statistics.median(ours)
        print(f"{name:<24}{1 / b:>14.2f}{1 / f:>14.2f}{f / b:>15.3f}x")


if __name__ == "__main__":
    main()
