"""Benchmark: bitkit's batched BiT preprocessing vs a plain torchvision pipeline, same run.

Both pipelines do the BiT train transform (square resize -> random crop -> random flip ->
[-1, 1]) on the same raw images, in this process, on one thread: torchvision per image
(PIL in, the way most tutorials write it), bitkit per batch (``BiTTransform``). Also prints the
embedded world's generation speed. Run: ``.venv/bin/python bench/data_pipeline.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from bitkit.data import load
from bitkit.data.transforms import BiTTransform

WORLD = ("world-upstream", "world-objects", "world-texture", "world-count", "world-distance")


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="images per measurement")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)

    print(f"world generation, {args.n} images, 1 thread (best of {args.repeats}):")
    for name in WORLD:
        for size in (32, 64):
            ds = load(name, "train", size=args.n, image_size=size)
            dt = _best(lambda ds=ds: [ds.render(range(lo, min(lo + args.batch, args.n)))
                                      for lo in range(0, args.n, args.batch)], args.repeats)
            print(f"  {name:<16} {size:>3}px {args.n / dt:>9,.0f} images/s")

    raw = load("world-objects", "train", size=args.n)
    images = [img for img, _ in raw.__getitems__(list(range(args.n)))]
    pil = [Image.fromarray(t.permute(1, 2, 0).numpy()) for t in images]
    for resize, crop in ((160, 128), (36, 32)):
        tv = T.Compose([T.Resize((resize, resize)), T.RandomCrop(crop), T.RandomHorizontalFlip(),
                        T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
        bit = BiTTransform(resize, crop, train=True)

        def run_tv(tv=tv):
            return [torch.stack([tv(im) for im in pil[lo:lo + args.batch]])
                    for lo in range(0, args.n, args.batch)]

        def run_bit(bit=bit):
            return [bit(pil[lo:lo + args.batch]) for lo in range(0, args.n, args.batch)]

        def run_bit_tensor(bit=bit):
            return [bit(images[lo:lo + args.batch]) for lo in range(0, args.n, args.batch)]

        out_tv, out_bit = run_tv()[0], run_bit()[0]
        assert out_tv.shape == out_bit.shape and out_bit.min() >= -1 and out_bit.max() <= 1
        t_tv, t_bit, t_bt = (_best(f, args.repeats) for f in (run_tv, run_bit, run_bit_tensor))
        print(f"BiT train transform 32px -> {resize}/{crop}, batch {args.batch}:")
        print(f"  torchvision per image (PIL)  {args.n / t_tv:>9,.0f} images/s")
        print(f"  bitkit batched (PIL in)      {args.n / t_bit:>9,.0f} images/s"
              f"   ratio {t_tv / t_bit:.2f}x")
        print(f"  bitkit batched (uint8 in)    {args.n / t_bt:>9,.0f} images/s"
              f"   ratio {t_tv / t_bt:.2f}x")
    print(f"(numpy {np.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
