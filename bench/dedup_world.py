"""Near-duplicate detection on the embedded world: precision, recall and speed per method.

The world plants 40 perturbed copies of test images of each host task (``world.duplicates``)
in the upstream train split. For each world seed and host, this script embeds the host's test
set and ``--search`` upstream images once with lesson 07's upstream model (R14x0.25, 50k
images, 600 steps; cached), then searches them with

- ``cosine``: the cosine of the pre-logits alone (``verify=False``), scored at the fixed
  threshold and at its best-F1 threshold, which can only be found *with* the ground truth;
- ``verified``: the two-arm search with pixel verification (bitkit's default), at the fixed
  ``DEFAULT_THRESHOLD``, each score read against the test image's runner-up
  (``DuplicateReport.flags``: a distinct best neighbour counts from 0.90, a crowd of similar
  pictures only when near-identical).

It prints recall, precision (planted pairs and confirmed look-alikes count as right), the
precision on planted pairs alone, the counts of look-alikes and false positives, and the
search time (embedding excluded; the same embeddings serve both methods). It ends with the
verified search pooled over the seeds per host (a 40-pair test set moves recall in steps of
0.025, so one seed's cell is a noisy estimate) and its recall on JPEG copies by quality.

    python bench/dedup_world.py [--seeds 0 1 2] [--search 20000] [--hosts world-objects ...]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch

from bitkit import data, dedup, experiments
from bitkit.data import world


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--search", type=int, default=20_000)
    p.add_argument("--hosts", nargs="+", default=list(world.duplicates.HOSTS))
    p.add_argument("--model", default="R14x0.25")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    net = experiments.pretrain(a.model, "world-upstream", size=50_000, steps=600,
                               batch_size=128, progress=False)
    print(f"model {a.model} (world-upstream 50k, 600 steps), {a.search:,} upstream images, "
          f"fixed threshold {dedup.DEFAULT_THRESHOLD}, torch threads {a.threads}")
    print(f"{'seed':>4} {'host':<14} {'method':<22} {'recall':>7} {'prec.':>6} {'planted':>8} "
          f"{'look-al.':>8} {'false+':>7} {'search s':>9}")
    pooled = {host: Counter() for host in a.hosts}
    jpeg = Counter()
    for seed in a.seeds:
        up = data.preprocess(data.load("world-upstream", "train", size=a.search, seed=seed),
                             train=False)
        index = dedup.embed(net, up, progress=False)
        for host in a.hosts:
            test = data.preprocess(data.load(host, "test", seed=seed), train=False)
            q = dedup.embed(net, test, progress=False)
            truth = world.pairs(a.search, host=host, seed=seed)
            t0 = time.perf_counter()
            cosine = dedup.search(q, index, verify=False)
            t_cos = time.perf_counter() - t0
            t0 = time.perf_counter()
            verified = dedup.search(q, index)
            t_ver = time.perf_counter() - t0
            sweep = cosine.sweep(truth)
            best = dedup.DuplicateReport.best_threshold(sweep)
            rows = [("cosine @ fixed", cosine.sweep(truth, [dedup.DEFAULT_THRESHOLD])[0], t_cos),
                    (f"cosine @ best {best:.2f}", next(r for r in sweep if r["threshold"] == best),
                     t_cos),
                    ("verified @ fixed", verified.sweep(truth, [dedup.DEFAULT_THRESHOLD])[0],
                     t_ver)]
            for method, r, t in rows:
                fmt = lambda x: "   -" if x is None else f"{x:.3f}"  # noqa: E731
                print(f"{seed:>4} {host:<14} {method:<22} {fmt(r['recall']):>7} "
                      f"{fmt(r['precision']):>6} {fmt(r['planted_precision']):>8} "
                      f"{r['look_alikes']:>8} {r['false_positives']:>7} {t:>9.1f}", flush=True)
            _pool(pooled[host], jpeg, verified.outcomes(truth), truth, seed, host)
    _print_pooled(pooled, jpeg, a.seeds)


def _pool(total: Counter, jpeg: Counter, outcomes: dict, truth: list, seed: int,
          host: str) -> None:
    """Add one search's outcomes to the host's totals and to the JPEG copies by quality."""
    total.update(found=len(outcomes["found"]), missed=len(outcomes["missed"]),
                 look=len(outcomes["look_alikes"]), false=len(outcomes["false_positives"]))
    missed = {m["downstream_id"] for m in outcomes["missed"]}
    pair_at = world.duplicates.test_plants(world.duplicates.TEST_SIZE)  # test index -> pair
    for pair in truth:
        if pair.perturbation == "jpeg":
            p = pair_at[int(pair.downstream_id.rsplit(":", 1)[1])]
            band = world.duplicates.perturbation(seed, p, host)["quality"] // 10 * 10
            jpeg[band, "copies"] += 1
            jpeg[band, "missed"] += pair.downstream_id in missed


def _print_pooled(pooled: dict[str, Counter], jpeg: Counter, seeds: list[int]) -> None:
    print(f"\nverified @ fixed, pooled over seeds {', '.join(map(str, seeds))}:")
    for host, c in pooled.items():
        planted, right = c["found"] + c["missed"], c["found"] + c["look"]
        flagged = right + c["false"]
        print(f"  {host:<14} found {c['found']:>4} of {planted:<4} recall {c['found'] / planted:.3f}"
              f"   precision {right / flagged if flagged else float('nan'):.3f}"
              f" ({c['look']} look-alikes, {c['false']} false)")
    print("JPEG copies by quality (every host):")
    for band in sorted({b for b, _ in jpeg}):
        n, m = jpeg[band, "copies"], jpeg[band, "missed"]
        print(f"  q{band}-{band + 9}: {n:>4} copies, {m:>3} missed ({m / n:.0%})")


if __name__ == "__main__":
    main()
