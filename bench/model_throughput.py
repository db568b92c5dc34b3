"""Training-step throughput of bitkit's ResNet-v2 against timm's ``resnetv2_*_bit``, same run.

One step = forward + backward + SGD(momentum 0.9) update, on random data, same batch, same
threads. Variants are measured in interleaved rounds (A B C A B C ...) so a slow moment of the
machine does not land on one of them, and the median step time is reported.

    python bench/model_throughput.py                      # CPU, R50x1 at 128 px
    python bench/model_throughput.py --device cuda --image-size 224 --batch 64   # + bf16, CL

Variants: bitkit (fused F.batch_norm weight standardization, the default), bitkit with an
explicit var_mean standardization, timm; each with channels_last off and on, and on CUDA under
bf16 autocast. Ratios > 1 mean bitkit is faster than timm.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import bitkit.models as bm
import bitkit.resnetv2 as arch  # defines StdConv2d, so the place to swap standardize_weight


def var_mean_standardize(weight: torch.Tensor, eps: float = bm.WS_EPS) -> torch.Tensor:
    """The textbook formulation, measured against the fused default."""
    var, mean = torch.var_mean(weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (weight - mean) * torch.rsqrt(var + eps)


def build(kind: str, model: str, classes: int):
    if kind == "timm":
        import timm

        depth, width = model[1:].split("x")
        return timm.create_model(f"resnetv2_{depth}x{width}_bit", pretrained=False, num_classes=classes)
    return bm.create(model, num_classes=classes, zero_head=False)


def make_step(net, opt, x, y, device, autocast, ws_impl):
    def step():
        arch.standardize_weight = ws_impl  # module global read by StdConv2d.forward at call time
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="R50x1")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    fused = arch.standardize_weight
    layouts = [False, True]
    variants = []
    for cl in layouts:
        for kind, ws in (("bitkit", fused), ("bitkit-var_mean", var_mean_standardize), ("timm", fused)):
            torch.manual_seed(0)
            net = build("timm" if kind == "timm" else "bitkit", args.model, 1000).to(device).train()
            fmt = torch.channels_last if cl else torch.contiguous_format
            net = net.to(memory_format=fmt)
            x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
            x = x.contiguous(memory_format=fmt)
            y = torch.randint(0, 1000, (args.batch,), device=device)
            opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
            name = kind + (" +channels_last" if cl else "")
            variants.append((name, make_step(net, opt, x, y, device, cuda, ws)))

    def timed(step):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(args.warmup):
        for _, step in variants:
            step()
    times = {name: [] for name, _ in variants}
    for _ in range(args.rounds):
        for name, step in variants:
            times[name].append(timed(step))
    arch.standardize_weight = fused

    print(f"{args.model} train step, batch {args.batch} at {args.image_size}px, {device}, "
          f"{args.threads} threads, bf16 autocast: {cuda}; median of {args.rounds} rounds")
    med = {n: statistics.median(t) for n, t in times.items()}
    for n, t in med.items():
        print(f"  {n:<30} {args.batch / t:8.1f} img/s  ({t * 1e3:7.1f} ms/step)")
    for cl in layouts:
        suffix = " +channels_last" if cl else ""
        ratio = med["timm" + suffix] / med["bitkit" + suffix]
        alt = med["timm" + suffix] / med["bitkit-var_mean" + suffix]
        print(f"ratio bitkit/timm{suffix}: {ratio:.3f}x   (var_mean WS: {alt:.3f}x)")


if __name__ == "__main__":
    main()
