"""Near-duplicate search: bitkit's blocked exact k-NN vs FAISS ``IndexFlatIP``, and peak memory.

1. Speed. The same random unit embeddings (queries x upstream x dim) are searched by
   ``bitkit.dedup.knn`` (torch matmul + top-k over streamed blocks) and by FAISS's exact
   inner-product index (build + search), same threads, interleaved rounds, median time. Prints
   pairs/s (query-upstream similarities scored per second) and the ratio bitkit / FAISS
   (target >= 0.8 on CPU), and checks both return the same neighbours.
2. Memory. Supplementary B's scale -- 10k downstream test images against 1M upstream images at
   2048 features (R50x1 pre-logits) -- cannot hold the 8 GB upstream matrix, and does not need to:
   upstream blocks stream through. The script prints the analytic peak (``estimate_memory``) and
   simulates the search with random embeddings generated block by block, measuring the process's
   peak resident memory (Linux VmHWM, reset before the search) after a few blocks and after more,
   to show it does not grow with the upstream size. ``--full`` streams all 1M (minutes on a GPU,
   ~10+ minutes on 2 CPU cores); otherwise the full-scale time is extrapolated.

    python bench/dedup.py [--queries 1000 --upstream 50000 --dim 2048] [--device cuda] [--full]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bitkit import dedup


def unit_rows(n: int, dim: int, seed: int, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, dim, generator=g, device=device)
    return x.div_(x.norm(dim=1, keepdim=True))


def speed(a: argparse.Namespace) -> None:
    import faiss

    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    q = unit_rows(a.queries, a.dim, 0).numpy()
    x = unit_rows(a.upstream, a.dim, 1).numpy()
    pairs = a.queries * a.upstream

    def ours() -> tuple[np.ndarray, np.ndarray]:
        return dedup.knn(q, x, a.k, block_size=a.block_size, query_block=a.query_block)

    def flat() -> tuple[np.ndarray, np.ndarray]:
        index = faiss.IndexFlatIP(a.dim)
        index.add(x)
        return index.search(q, a.k)

    times: dict[str, list[float]] = {"bitkit": [], "faiss": []}
    results = {}
    for _ in range(a.rounds):
        for name, fn in (("bitkit", ours), ("faiss", flat)):
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    same = np.array_equal(results["bitkit"][1], results["faiss"][1])
    max_diff = float(np.abs(results["bitkit"][0] - results["faiss"][0]).max())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"speed: {a.queries} queries x {a.upstream} upstream x {a.dim}, k={a.k}, "
          f"{a.threads} threads, median of {a.rounds}")
    for k in med:
        print(f"  {k:<7} {med[k]:7.3f} s  {pairs / med[k] / 1e6:9.1f} M pairs/s")
    print(f"  ratio bitkit/faiss (pairs/s): {med['faiss'] / med['bitkit']:.2f}x   "
          f"same neighbours: {same}   max |sim diff|: {max_diff:.1e}")


def _vm_hwm() -> int:
    """Peak resident memory of this process in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not available (Linux only)")


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def memory(a: argparse.Namespace) -> None:
    n_q, n_up, dim, k = 10_000, 1_000_000, 2048, a.k
    est = dedup.estimate_memory(n_q, dim, k, block_size=a.block_size, query_block=a.query_block)
    print(f"\nmemory: {n_q:,} queries x {n_up:,} upstream x {dim}, block {a.block_size}, "
          f"query block {a.query_block}, k={k}")
    print("  estimate: " + ", ".join(f"{p} {v / 2**20:.0f} MiB" for p, v in est.items()))
    print(f"  (holding the upstream matrix instead: {4 * n_up * dim / 2**30:.1f} GiB)")
    dev = a.device
    _reset_hwm()
    base = _vm_hwm()  # the process before the search: interpreter, torch, the speed test's leftovers
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    queries = unit_rows(n_q, dim, 0, dev)
    top = dedup.TopK(queries, k, device=dev, query_block=a.query_block)
    blocks = -(-n_up // a.block_size) if a.full else a.sim_blocks
    checkpoints = {2, blocks}
    t0 = time.perf_counter()
    for b in range(blocks):
        n = min(a.block_size, n_up - b * a.block_size)
        top.add(unit_rows(n, dim, 1000 + b, dev))
        if b + 1 in checkpoints:
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated()
                print(f"  after {b + 1:4d} blocks ({(b + 1) * a.block_size:>9,} upstream): "
                      f"peak GPU memory {peak / 2**20:.0f} MiB")
            else:
                print(f"  after {b + 1:4d} blocks ({(b + 1) * a.block_size:>9,} upstream): "
                      f"peak RSS of the search {(_vm_hwm() - base) / 2**20:.0f} MiB "
                      f"(incl. the queries and generating each random block)")
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    done = min(blocks * a.block_size, n_up)
    rate = n_q * done / dt
    print(f"  searched {done:,} upstream in {dt:.1f} s: {rate / 1e9:.2f} G pairs/s "
          f"(incl. generating the random blocks)")
    if done < n_up:
        print(f"  extrapolated full 1M search: {n_q * n_up / rate / 60:.1f} min on this device")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--upstream", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--block-size", type=int, default=dedup.DEFAULT_BLOCK)
    p.add_argument("--query-block", type=int, default=dedup.DEFAULT_QUERY_BLOCK)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sim-blocks", type=int, default=6)
    p.add_argument("--full", action="store_true", help="stream all 1M upstream embeddings")
    p.add_argument("--skip-speed", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not a.skip_speed:
        speed(a)
    memory(a)


if __name__ == "__main__":
    main()
