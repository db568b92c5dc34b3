"""Lesson 02's reference run: upstream model size, data size and budget, judged by transfer.

Each configuration pre-trains with ``bitkit.experiments.pretrain`` (BiT's upstream recipe
compressed to the run's steps, cached by its settings like the lesson's runs) and is judged
exactly as lesson 02 judges it: upstream val top-1 on 1,000 images and the linear few-shot probe
on world-objects (k-shot subsets of the first 1,000 train images, 500 test images, median over
few-shot seeds 0-2). Lesson 02 quotes this run for the effects that need more compute than its
5 CPU minutes; its record is in ``bench/README.md``.

    python bench/pretraining_effects.py R14x0.25:5000:1800 R14x0.25:50000:1800 --lr 0.1

A configuration is ``MODEL:SIZE:STEPS``; ``--seeds`` are upstream seeds (one run each).
"""

from __future__ import annotations

import argparse
import json
import time

from bitkit import data, experiments, linear_eval
from bitkit.evaluate import predict

TASK, SHOTS, FEWSHOT_SEEDS = "world-objects", (1, 5, 10), (0, 1, 2)


def peak_lr(text: str) -> float | None:
    """``--lr``: a number, or ``rule`` for BiT's own 0.03 x batch/256 (argparse names this
    function in its message when neither parses)."""
    return None if text == "rule" else float(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="+", help="MODEL:SIZE:STEPS, e.g. R14x0.25:50000:1800")
    p.add_argument("--lr", type=peak_lr, default=0.1,
                   help="peak lr (lesson 02's upstream_lr); 'rule': BiT's 0.03 x batch/256")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seeds", default="0", help="upstream seeds, comma-separated")
    args = p.parse_args()

    train = data.load(TASK, "train")
    test = data.load(TASK, train.card.eval_split)
    pool_x = data.preprocess(data.SubsetDataset(train, range(1000)), train=False)
    test_x = data.preprocess(data.SubsetDataset(test, range(500)), train=False)
    up_val = data.load("world-upstream", "val")
    up_val = data.preprocess(data.SubsetDataset(up_val, range(1000)), train=False)
    for seed in (int(s) for s in args.seeds.split(",")):
        for spec in args.configs:
            model, size, steps = spec.split(":")
            started = time.perf_counter()
            net = experiments.pretrain(model, "world-upstream", size=int(size), steps=int(steps),
                                       batch_size=args.batch, base_lr=args.lr, seed=seed,
                                       progress=False)
            seconds = time.perf_counter() - started
            probe = linear_eval.linear_fewshot(net, pool_x, test_x, shots=SHOTS,
                                               seeds=FEWSHOT_SEEDS, progress=False)
            row = {"model": model, "size": int(size), "steps": int(steps), "lr": args.lr,
                   "batch": args.batch, "seed": seed, "pretrain_s": round(seconds),
                   "upstream_top1": round(100 * predict(net, up_val, progress=False).top1, 1),
                   **{f"{k}-shot": round(100 * probe.median(k), 1) for k in SHOTS},
                   "10-shot seeds": [round(100 * a, 1) for a in probe.per_seed(10)]}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
