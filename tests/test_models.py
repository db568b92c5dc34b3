"""The BiT ResNet-v2 matches the released code's definition and the paper (sections 3.3, 4.3)."""

import pytest
import torch
import torch.nn.functional as F

from bitkit import models, resnetv2
from bitkit.models import PreActBottleneck, StdConv2d, create, get_config, standardize_weight

# Millions of parameters, computed from the architecture: backbone incl. final GN,
# and with a 1000-class head.
BACKBONE_M = {"R50x1": 23.50, "R50x3": 211.17, "R101x1": 42.49, "R101x3": 381.79,
              "R152x2": 232.24, "R152x4": 928.34}
WITH_HEAD_M = {"R50x1": 25.55, "R101x3": 387.93, "R152x4": 936.53}


@pytest.mark.parametrize("name", list(BACKBONE_M))
def test_parameter_counts_match_facts(name):
    m = create(name, num_classes=1000, device="meta")  # no memory even for R152x4
    assert round(models.count_parameters(m, include_head=False) / 1e6, 2) == BACKBONE_M[name]
    if name in WITH_HEAD_M:
        assert round(models.count_parameters(m) / 1e6, 2) == WITH_HEAD_M[name]


def test_r50x1_layout_and_output_stride():
    m = create("R50x1", num_classes=1000, device="meta")
    assert [len(s.units) for s in m.stages] == [3, 4, 6, 3]
    assert m.stem.conv.weight.shape == (64, 3, 7, 7) and m.stem.conv.stride == (2, 2)
    assert m.stem.conv.padding == (3, 3)
    # Stride sits on the 3x3 conv of the first unit of stages 2-4; the 1x1s are unstrided.
    for i, stage in enumerate(m.stages):
        u = stage.units[0]
        assert u.conv2.stride == ((1, 1) if i == 0 else (2, 2))
        assert u.conv1.stride == u.conv3.stride == (1, 1)
        assert u.conv2.padding == (1, 1) and u.conv1.padding == (0, 0)
    # A projection exists exactly when the shape changes: the first unit of each stage.
    projections = [[u.proj is not None for u in s.units] for s in m.stages]
    assert projections == [[True] + [False] * (n - 1) for n in (3, 4, 6, 3)]
    gns = [mod for mod in m.modules() if isinstance(mod, torch.nn.GroupNorm)]
    assert all(g.num_groups == 32 and g.eps == 1e-5 and g.affine for g in gns)
    assert not any(c.bias is not None for c in m.modules() if isinstance(c, StdConv2d))
    fmap = m.forward_features(torch.empty(2, 3, 224, 224, device="meta"))
    assert fmap.shape == (2, 2048, 7, 7)  # output stride 32
    assert m(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 1000)


def test_stem_pads_with_zeros_not_minus_infinity():
    m = create("R14x0.25", num_classes=2)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        conv = m.stem.conv(x)
        ours = m.stem(x)
        zero_pad = F.max_pool2d(F.pad(conv, (1, 1, 1, 1)), 3, 2)
        inf_pad = F.max_pool2d(conv, 3, 2, padding=1)
    assert ours.shape == (1, 16, 8, 8)
    assert torch.equal(ours, zero_pad)
    # Negative border values survive -inf padding but not zero padding: the two differ.
    assert not torch.equal(ours, inf_pad)


def test_weight_standardization_statistics():
    w = torch.randn(8, 4, 3, 3) * 5 + 2
    s = standardize_weight(w)
    flat = s.flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(8), atol=1e-5)
    assert torch.allclose(flat.var(1, unbiased=False), torch.ones(8), atol=1e-4)
    var, mean = torch.var_mean(w.flatten(1), dim=1, unbiased=False, keepdim=True)
    direct = ((w.flatten(1) - mean) / torch.sqrt(var + models.WS_EPS)).view_as(w)
    assert torch.allclose(s, direct, atol=1e-6)


def test_unit_matches_written_out_equations():
    torch.manual_seed(1)
    layers = resnetv2._Layers("group", "standardized", 4, models.WS_EPS)
    unit = PreActBottleneck(layers, 8, 4, 16, stride=2)
    for p in unit.parameters():
        p.data.normal_()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        pre = F.relu(unit.norm1(x))
        residual = unit.proj(pre)
        out = unit.conv1(pre)
        out = unit.conv2(F.relu(unit.norm2(out)))
        out = unit.conv3(F.relu(unit.norm3(out)))
        assert torch.allclose(unit(x), out + residual)
    assert unit(x).shape == (2, 16, 5, 5)


def test_group_norm_model_is_batch_independent():
    """Why BiT uses GN+WS: one image's output does not depend on the rest of the batch."""
    m = create("R14x0.25", num_classes=5, zero_head=False).train()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        together = m(x)
        alone = torch.cat([m(x[i:i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("norm,conv", [("group", "plain"), ("batch", "standardized"),
                                       ("batch", "plain"), ("group", "standardized")])
def test_ablation_variants_forward_and_backward(norm, conv):
    m = create("R14x0.25", num_classes=4, norm=norm, conv=conv, zero_head=False)
    x = torch.randn(4, 3, 32, 32)
    loss = F.cross_entropy(m(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(isinstance(mod, StdConv2d) for mod in m.modules()) == (conv == "standardized")
    kind = torch.nn.BatchNorm2d if norm == "batch" else torch.nn.GroupNorm
    assert any(isinstance(mod, kind) for mod in m.modules())


def test_batchnorm_variant_uses_running_statistics_in_eval():
    m = create("R14x0.25", num_classes=3, norm="batch", zero_head=False)
    x = torch.randn(8, 3, 32, 32)
    m.train()
    with torch.no_grad():
        for _ in range(30):  # momentum 0.1: running statistics converge to the batch's
            m(x)
    m.eval()
    with torch.no_grad():
        full = m(x)
        single = torch.cat([m(x[i:i + 1]) for i in range(8)])
    scale = full.abs().max()
    assert torch.allclose(full, single, atol=1e-4 * scale)  # eval: no batch statistics
    first_bn = m.stages[0].units[0].norm1
    assert first_bn.num_batches_tracked.item() == 30
    assert not torch.allclose(first_bn.running_mean, torch.zeros_like(first_bn.running_mean))
    m.train()
    with torch.no_grad():
        train_single = torch.cat([m(x[i:i + 2]) for i in range(0, 8, 2)])
    # Train mode normalises with each mini-batch's statistics: outputs change with the batch.
    assert not torch.allclose(full, train_single, atol=1e-2 * scale)


def test_zero_head_and_reset_head():
    m = create("R14x0.25", num_classes=7)
    assert torch.count_nonzero(m.head.weight) == 0 and torch.count_nonzero(m.head.bias) == 0
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(m(x), torch.zeros(2, 7))
    m.head.weight.data.normal_()
    m.reset_head(3)
    assert m.num_classes == 3 and m(x).shape == (2, 3)
    assert torch.count_nonzero(m.head.weight) == 0
    feats = m.features(x)
    assert feats.shape == (2, m.num_features) == (2, 512)
    assert (feats >= 0).all()  # pre-logits come after the final ReLU


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = create("R14x0.25", num_classes=3, zero_head=False)
    b = create("R14x0.25", num_classes=3, zero_head=False)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for m in (a, b):
        F.cross_entropy(m(x), y).backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_names_and_errors():
    assert get_config("BiT-M-R50x1").name == "R50x1"
    assert get_config("resnetv2_101x3_bit.goog_in21k").name == "R101x3"
    assert get_config("r152x4").name == "R152x4"
    with pytest.raises(ValueError, match="Did you mean.*R50x1"):
        get_config("R50x2")
    with pytest.raises(ValueError, match="norm must be 'group'"):
        create("R14x0.25", norm="layer")
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        create("R14x0.25")(torch.randn(3, 32, 32))
    assert set(models.list_models(teaching=False)) == set(models.RELEASED_SIZES)
    assert "R14x0.25" in models.list_models(teaching=True)


def test_dropout_only_in_training():
    m = create("R14x0.25", num_classes=3, dropout=0.5, zero_head=False)
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(m(x), m(x))
