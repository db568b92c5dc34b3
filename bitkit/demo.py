"""``bitkit demo``: the smallest honest end-to-end job on embedded defaults.

Builds a model, writes its weights in the released BiT ``.npz`` layout, loads them into a fresh
model of the same size (through the same code path as a downloaded ``BiT-M-R50x1.npz``), checks
that the two give identical logits, and prints the parameter table of every size. No network,
a few seconds on a CPU. The quickstart notebook replaces this as the main job once it exists.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bitkit import models, weights


def run(model_name: str = "R26x0.25", num_classes: int = 10, image_size: int = 64) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    source = models.create(model_name, num_classes=num_classes, zero_head=False)
    x = torch.rand(4, 3, image_size, image_size) * 2 - 1
    with tempfile.TemporaryDirectory() as d:
        path = weights.save_npz(source, Path(d) / f"{model_name}.npz")
        arch = weights.describe(path)
        # Restoring a file for prediction keeps its head only when asked; transfer (the default)
        # starts from a zero head.
        restored = models.create(model_name, num_classes=num_classes, weights=str(path),
                                 keep_head=True)
        transfer = models.create(model_name, num_classes=3, weights=str(path))
    with torch.no_grad():
        same = torch.equal(source.eval()(x), restored.eval()(x))
        transfer_logits = transfer.eval()(x)
    if not same:
        raise RuntimeError("weights written and read back give different logits")
    result = {
        "model": model_name,
        "file_architecture": arch.name,
        "roundtrip_identical": same,
        "transfer_head_all_zero": bool((transfer_logits == 0).all()),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    print(f"{model_name}: wrote the released .npz layout, read it back as {arch.name}; "
          f"logits identical: {same}.")
    print(f"Loaded into a 3-class model: new head zero-initialised, logits all zero: "
          f"{result['transfer_head_all_zero']} (BiT transfer, paper 3.3).")
    print()
    print(format_parameter_table())
    return result


def format_parameter_table() -> str:
    rows = models.parameter_table()
    lines = [f"{'model':<10} {'depth':>5} {'width':>5} {'features':>8} {'backbone':>10} {'+1k head':>10}"]
    for r in rows:
        lines.append(
            f"{r['model']:<10} {r['depth']:>5} {r['width']:>5g} {r['features']:>8} "
            f"{r['backbone_params'] / 1e6:>9.2f}M {r['params'] / 1e6:>9.2f}M"
        )
    return "\n".join(lines)


def demo_command(args) -> int:
    """``bitkit demo [--model NAME]``."""
    run(args.model)
    return 0
