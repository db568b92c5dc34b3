"""Does transfer matter on the embedded world? Pre-trained vs from scratch, at equal steps.

BiT's claim (paper sections 1, 4.1) is that a representation pre-trained on a large upstream
set beats training from scratch downstream, and that more upstream data helps. This script
checks that the embedded world reproduces both effects, with a small hand-written SGD loop
(independent of ``bitkit.train``) over ``bitkit.models.create("R14x0.25")``:

1. pre-train on ``world-upstream`` with many distinct images (``--upstream-size``) and, with
   the same steps, on only ``--small-upstream`` distinct images (less data);
2. fine-tune each, and a fresh model, for the same number of steps on 1000 examples (VTAB-1k
   style) of several downstream tasks; print test accuracy side by side.

Run: ``.venv/bin/python bench/world_transfer.py`` (about 5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from bitkit.data import load, preprocess, vtab1k_split
from bitkit.models import create

TASKS = ("world-objects", "world-texture", "world-count", "world-fine")


def batches(dataset, steps: int, batch: int, seed: int):
    """``steps`` random batches (with replacement across batches) via the batched fetch."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        items = dataset.__getitems__(rng.integers(0, len(dataset), batch).tolist())
        yield torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def train(model, dataset, steps: int, batch: int, lr: float, wd: float, seed: int) -> float:
    """Plain SGD + momentum, linear warm-up over the first 10% of steps, cosine decay."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    warm = max(1, steps // 10)
    model.train()
    loss = torch.tensor(0.0)
    for step, (x, y) in enumerate(batches(dataset, steps, batch, seed)):
        scale = (step + 1) / warm if step < warm else 0.5 * (1 + np.cos(np.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


@torch.no_grad()
def accuracy(model, dataset, batch: int = 250) -> float:
    model.eval()
    correct = 0
    for lo in range(0, len(dataset), batch):
        items = dataset.__getitems__(list(range(lo, min(lo + batch, len(dataset)))))
        x = torch.stack([x for x, _ in items])
        y = torch.tensor([int(y) for _, y in items])
        correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / len(dataset)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream-steps", type=int, default=1500)
    ap.add_argument("--upstream-size", type=int, default=1_000_000)
    ap.add_argument("--small-upstream", type=int, default=2_000)
    ap.add_argument("--downstream-steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models = {"scratch": create("R14x0.25", 728)}
    for label, size in (("upstream-big", args.upstream_size),
                        ("upstream-small", args.small_upstream)):
        torch.manual_seed(0)
        model = create("R14x0.25", 728, zero_head=False)
        data = preprocess(load("world-upstream", "train", size=size), train=True)
        t = time.perf_counter()
        loss = train(model, data, args.upstream_steps, args.batch, lr=0.1, wd=1e-4, seed=1)
        val = accuracy(model, preprocess(load("world-upstream", "val", size=2000), train=False))
        print(f"pre-train {label:<15} {size:>9,} distinct images, {args.upstream_steps} steps: "
              f"loss {loss:.2f}, upstream val top-1 {val:.1f}% ({time.perf_counter() - t:.0f}s)")
        models[label] = model

    print(f"\nfine-tune {args.downstream_steps} steps, batch 64, on 1000 examples; test top-1 (%)")
    print(f"{'task':<18}" + "".join(f"{k:>16}" for k in models))
    for task in args.tasks:
        raw = load(task, "train")
        thousand, _ = vtab1k_split(raw, seed=0, train=1000, val=0)
        train_1k = preprocess(thousand, train=True)
        test = preprocess(load(task, "test"), train=False)
        row = []
        for name, base in models.items():
            torch.manual_seed(0)
            model = copy.deepcopy(base).reset_head(raw.num_classes)
            lr = 0.1 if name == "scratch" else 0.03  # scratch gets the larger lr it needs
            train(model, train_1k, args.downstream_steps, 64, lr=lr, wd=0.0, seed=2)
            row.append(accuracy(model, test))
        print(f"{task:<18}" + "".join(f"{a:>16.1f}" for a in row))


if __name__ == "__main__":
    main()
