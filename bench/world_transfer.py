"""Does transfer matter on the embedded world? Pre-trained vs from scratch, at equal steps.

BiT's claims (paper sections 1, 4.1, Figs. 4-5): a representation pre-trained on a large upstream
set beats the same architecture trained from scratch downstream, more upstream data helps, and
larger models help (most when there is enough upstream data). This script measures all three on
the embedded world, through the same spine the notebooks use (``experiments.pretrain`` and
``experiments.finetune``, i.e. BiT's upstream schedule and BiT-HyperRule downstream):

arms, per model size
    scratch   the architecture, randomly initialised, fine-tuned with the same recipe;
    small     pre-trained on ``--small-upstream`` distinct upstream images;
    large     pre-trained on ``--upstream-size`` distinct upstream images (same steps: only the
              amount of distinct data differs, as along the dataset axis of Figs. 4-5).

Every arm is fine-tuned for the same ``--steps`` on the same ``--train-size`` examples of every
task (VTAB-1k style), and gets its own best ``base_lr`` from ``--lrs``: a from-scratch model
needs a larger lr than BiT's 0.003, and comparing at one lr would be unfair to one side. The lr
is chosen on ``--val-size`` held-out training examples, never on the test split
(``experiments.sweep_lr``; the table prints which lr won). Printed: test top-1 per task and arm,
differences pre-trained - scratch and large - small, and group means (natural, specialised,
structured, as in VTAB).

Default (about 30 minutes on 2 idle CPU cores with ``--threads 1`` while another job uses the
other core; each pre-training sees 384k upstream images): R14x0.25 with all three arms on every
task, then R26x0.5 pre-trained on the large upstream vs scratch on every task (model size axis).
The last block prints the three claims as group means. ``tests/test_world_transfer.py`` checks
the same claims on a smaller, faster configuration. On a busy machine ``--threads 1``: two torch
processes with 2 threads each on 2 cores run many times slower than either alone.

Run: ``.venv/bin/python bench/world_transfer.py [--help]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bitkit import data, experiments

#: Every world task, by VTAB group (the cards' ``group`` field).
GROUPS = {g: tuple(data.list_cards(f"embedded-{g}")) for g in ("natural", "specialized",
                                                                "structured")}
TASKS = tuple(t for g in GROUPS.values() for t in g)


def sweep(task: str, start, args) -> experiments.LrSweep:
    """Fine-tune ``start`` on ``task`` once per lr; the lr is chosen on held-out training
    examples and the chosen run's test top-1 is what the tables show."""
    return experiments.sweep_lr(task, start, args.lrs, train_size=args.train_size,
                                val_size=args.val_size, seed=args.seed, steps=args.steps,
                                batch_size=args.batch_size, test_size=args.test_size,
                                progress=False)


def pretrained(model: str, size: int, args) -> torch.nn.Module:
    t = time.perf_counter()
    net = experiments.pretrain(model, size=size, steps=args.upstream_steps,
                               batch_size=args.upstream_batch, seed=args.seed,
                               base_lr=args.upstream_lr, cache_dir=args.cache_dir, progress=False)
    print(f"  pre-trained {model} on {size:,} distinct upstream images, {args.upstream_steps} "
          f"steps of {args.upstream_batch} ({time.perf_counter() - t:.0f}s, cached)", flush=True)
    return net


def table(model: str, tasks, arms: dict, args) -> dict:
    """Sweep every arm on every task; print one row per task as it finishes."""
    names = list(arms)
    print(f"\n{model}: fine-tune {args.steps} steps, batch {args.batch_size}, "
          f"{args.train_size} examples; test top-1 % (base_lr chosen on {args.val_size} "
          f"held-out training examples)")
    head = "".join(f"{n:>16}" for n in names)
    diffs = ["large-scratch"] + (["large-small"] if "small" in names else [])
    print(f"{'task':<18}{head}" + "".join(f"{d:>15}" for d in diffs), flush=True)
    out = {}
    for task in tasks:
        row = {n: sweep(task, start, args) for n, start in arms.items()}
        out[task] = {n: {"top1": 100 * r.top1, "lr": r.lr,
                         "val": {lr: 100 * v for lr, v in r.val_top1.items()},
                         "test": {lr: 100 * t for lr, t in r.test_top1.items()}}
                     for n, r in row.items()}
        top1 = {n: out[task][n]["top1"] for n in names}
        d = [top1["large"] - top1["scratch"]]
        if len(diffs) > 1:
            d.append(top1["large"] - top1["small"])
        cells = "".join(f"{top1[n]:>9.1f} ({row[n].lr:g})".rjust(16) for n in names)
        print(f"{task:<18}{cells}" + "".join(f"{x:>+15.1f}" for x in d), flush=True)
    means = {n: group_means(out, n) for n in names}
    for group in means[names[0]]:
        print(f"{'mean ' + group:<18}" + "".join(f"{means[n][group]:>16.1f}" for n in names))
    return out


def group_means(table: dict, arm: str) -> dict[str, float]:
    """Mean top-1 of ``arm`` per VTAB group (over the tasks of ``table``), plus "all"."""
    means = {g: [table[t][arm]["top1"] for t in members if t in table]
             for g, members in GROUPS.items()}
    means["all"] = [table[t][arm]["top1"] for t in table]
    return {g: sum(v) / len(v) for g, v in means.items() if v}


def claims(results: dict, args) -> None:
    """The three claims of the module docstring, as differences of group means."""
    rows = [(f"pre-trained - scratch ({args.model})", results[args.model], "large", "scratch"),
            (f"more upstream data ({args.model})", results[args.model], "large", "small")]
    if args.large_model:
        big = results[args.large_model]
        rows.append((f"pre-trained - scratch ({args.large_model})", big, "large", "scratch"))
        both = {t: {"small": results[args.model][t]["large"], "large": big[t]["large"]}
                for t in big if t in results[args.model]}
        rows.append((f"larger model ({args.large_model} - {args.model})", both, "large", "small"))
    groups = list(group_means(results[args.model], "large"))
    print("\nclaims: difference of mean top-1 (points)")
    print(f"{'':<40}" + "".join(f"{g:>13}" for g in groups))
    for name, table, a, b in rows:
        ma, mb = group_means(table, a), group_means(table, b)
        print(f"{name:<40}" + "".join(f"{ma[g] - mb[g]:>+13.1f}" if g in ma else f"{'':>13}"
                                      for g in groups))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="R14x0.25", help="the model of the three-arm table")
    ap.add_argument("--large-model", default="R26x0.5",
                    help="the larger model of the model-size table ('' to skip it)")
    ap.add_argument("--upstream-size", type=int, default=1_000_000)
    ap.add_argument("--small-upstream", type=int, default=1000)
    ap.add_argument("--upstream-steps", type=int, default=3000)
    ap.add_argument("--upstream-batch", type=int, default=128)
    ap.add_argument("--upstream-lr", type=float, default=0.1,
                    help="peak upstream lr; BiT's 0.03 x batch/256 is tuned for 90 epochs and "
                         "learns little in a CPU-sized run (0 keeps it)")
    ap.add_argument("--train-size", type=int, default=1000)
    ap.add_argument("--val-size", type=int, default=500,
                    help="held-out training examples the lr is chosen on")
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps, every arm")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--size-tasks", nargs="+", default=["all"],
                    help="tasks of the model-size table, or 'all'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "bitkit-bench"))
    ap.add_argument("--json", help="also write every number to this file")
    args = ap.parse_args()
    args.upstream_lr = args.upstream_lr or None
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    print(f"pre-training ({args.model}):")
    arms = {"scratch": args.model, "small": pretrained(args.model, args.small_upstream, args),
            "large": pretrained(args.model, args.upstream_size, args)}
    results = {args.model: table(args.model, args.tasks, arms, args)}

    if args.large_model:
        size_tasks = list(TASKS) if args.size_tasks == ["all"] else args.size_tasks
        print(f"\nmodel size: pre-training ({args.large_model}):")
        big = {"scratch": args.large_model,
               "large": pretrained(args.large_model, args.upstream_size, args)}
        results[args.large_model] = table(args.large_model, size_tasks, big, args)
        print(f"\n{'task':<18}{args.model + ' large':>20}{args.large_model + ' large':>20}"
              f"{'bigger-smaller':>16}")
        for task in size_tasks:
            a = results[args.model][task]["large"]["top1"]
            b = results[args.large_model][task]["large"]["top1"]
            print(f"{task:<18}{a:>20.1f}{b:>20.1f}{b - a:>+16.1f}")

    claims(results, args)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
