"""BiT preprocessing: sizes, pixel range, flip/crop obey the card, batched == per-item."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bitkit.data import load, preprocess
from bitkit.data.transforms import BiTTransform


def _asymmetric(n: int = 64) -> torch.Tensor:
    """uint8 images (n, 3, 16, 16) that differ from their own mirror image and each other."""
    x = torch.zeros(n, 3, 16, 16, dtype=torch.uint8)
    x[:, 0] = torch.arange(16, dtype=torch.uint8) * 16  # red ramp left -> right
    x[:, 1] = torch.arange(n, dtype=torch.uint8)[:, None, None]
    return x


def test_eval_resizes_to_crop_size_in_minus_one_one():
    t = BiTTransform(resize=160, crop=128, train=False)
    out = t(_asymmetric(4))
    assert out.shape == (4, 3, 128, 128) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, t(_asymmetric(4)))  # eval is deterministic
    full = BiTTransform(16, 16, train=False)(torch.full((1, 3, 16, 16), 255, dtype=torch.uint8))
    assert torch.all(full == 1.0)
    zero = BiTTransform(16, 16, train=False)(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    assert torch.all(zero == -1.0)


def test_flip_happens_only_when_the_card_allows():
    x = _asymmetric()
    plain = BiTTransform(16, 16, train=False)(x)
    g = torch.Generator().manual_seed(0)
    allowed = BiTTransform(16, 16, train=True, flip=True, random_crop=False)(x, generator=g)
    flipped = torch.tensor([torch.equal(a, p.flip(-1)) for a, p in zip(allowed, plain, strict=False)])
    same = torch.tensor([torch.equal(a, p) for a, p in zip(allowed, plain, strict=False)])
    assert torch.all(flipped | same) and 10 < int(flipped.sum()) < 54
    forbidden = BiTTransform(16, 16, train=True, flip=False, random_crop=False)(x, generator=g)
    assert torch.equal(forbidden, plain)


def test_random_crop_is_a_window_of_the_resized_image_and_skipped_when_forbidden():
    x = _asymmetric(32)
    resized = BiTTransform(24, 24, train=False)(x)
    out = BiTTransform(24, 16, train=True, flip=False)(x, generator=torch.Generator().manual_seed(1))
    offsets = set()
    for o, r in zip(out, resized, strict=False):
        hits = [(i, j) for i in range(9) for j in range(9)
                if torch.equal(o, r[:, i:i + 16, j:j + 16])]
        assert hits, "a crop must be a window of the resized image"
        offsets.add(hits[0])
    assert len(offsets) > 5  # random offsets
    no_crop = BiTTransform(24, 16, train=True, flip=False, random_crop=False)(x)
    assert torch.equal(no_crop, BiTTransform(24, 16, train=False)(x))


def test_pil_and_mixed_sizes():
    imgs = [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("L", (8, 8), 0)]
    out = BiTTransform(20, 16, train=True)(imgs)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out[0, 0], torch.ones(16, 16)) and torch.all(out[1] == -1)
    with pytest.raises(ValueError, match="need 0 < crop <= resize"):
        BiTTransform(16, 32, train=True)


def test_preprocess_uses_card_flags_and_sizes_and_works_in_a_dataloader():
    raw = load("world-orientation", "train", size=64)  # card: no flip, crop allowed
    train = preprocess(raw, train=True)
    assert not train.transform.flip and train.transform.random_crop
    assert (train.transform.resize, train.transform.crop) == raw.card.resolution
    image, label = train[5]
    assert image.shape == (3, 32, 32) and label == raw.targets[5]
    assert train.example_id(5) == raw.example_id(5) and train.class_names == raw.class_names
    batches = list(DataLoader(train, batch_size=16, num_workers=0))
    assert batches[0][0].shape == (16, 3, 32, 32) and batches[0][1].dtype == torch.int64
    assert np.array_equal(torch.cat([b[1] for b in batches]).numpy(), raw.targets)
    with pytest.raises(ValueError, match="give both resize= and crop="):
        preprocess(raw, train=True, resize=64)
