"""ResNet-v2 with Group Normalization and Weight Standardization: the BiT architecture.

Paper section 3.3 ("Upstream Pre-Training"; analysis in 4.3): BiT replaces every BatchNorm of a pre-activation
ResNet (He et al., 2016, "v2") with GroupNorm and standardizes the weights of every convolution.
Neither depends on batch statistics, so the model trains the same with 8 images per device or
4096, which is what makes large-batch upstream training and small-batch transfer both work
(Table 4 in the paper; notebook 01).

One definition builds every size, from the 936M-parameter R152x4 down to teaching sizes that
train on a laptop CPU. The switches ``norm`` and ``conv`` turn the model into the ablations of
Tables 4 and 5 (BatchNorm, plain convolutions).

Names follow ``bitkit.weights``' mapping to the released checkpoints:
``stem.conv`` = ``root_block``, ``stages.{s}.units.{u}`` = ``block{s+1}/unit{u+1:02d}``,
``norm`` = the pre-head ``group_norm``, ``head`` = ``head/conv2d``.

This module is the architecture only: it knows nothing of files. ``bitkit.weights`` (checkpoint
formats) builds on it, and ``bitkit.models`` (``create``, parameter counts) on both; use the
names through ``bitkit.models``, which re-exports every public name defined here. (Code that
swaps ``standardize_weight`` for an experiment must patch it here, where ``StdConv2d`` reads it.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

Norm = Literal["group", "batch"]
Conv = Literal["standardized", "plain"]

#: Weight-standardization epsilon. The released BiT code uses 1e-10; timm and HF transformers
#: use 1e-8. With real conv weights (variance ~1e-4) the two agree to ~1e-4 relative at the
#: logits; tests/test_timm_parity.py checks both settings against timm.
WS_EPS = 1e-10


# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """A ResNet-v2 size. ``units`` per stage, ``width`` multiplies every channel count."""

    name: str
    units: tuple[int, int, int, int]
    width: float
    gn_groups: int = 32
    teaching: bool = False

    @property
    def depth(self) -> int:
        # 3 convs per bottleneck unit + the stem conv + the head = the "50" in R50.
        return 3 * sum(self.units) + 2

    @property
    def stem_channels(self) -> int:
        return _channels(64, self.width)

    @property
    def stage_channels(self) -> list[tuple[int, int]]:
        """(mid, out) channels of each stage: 64/256, 128/512, 256/1024, 512/2048 times width."""
        return [(_channels(m, self.width), _channels(4 * m, self.width)) for m in (64, 128, 256, 512)]

    @property
    def num_features(self) -> int:
        """Size of the pre-logits vector (2048 * width)."""
        return self.stage_channels[-1][1]


def _channels(base: int, width: float) -> int:
    c = base * width
    if abs(c - round(c)) > 1e-9:
        raise ValueError(f"width {width} gives a fractional channel count {c} for base {base}")
    return int(round(c))


_BIT_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

#: Every named size. The six released BiT sizes, then teaching sizes that train at 32-64 px on
#: a CPU in minutes. Teaching sizes at width 1/4 have 16 channels in their first stage, so they
#: use 16 GroupNorm groups instead of 32 (a group must hold at least one channel).
CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        ModelConfig("R50x1", _BIT_UNITS[50], 1),
        ModelConfig("R50x3", _BIT_UNITS[50], 3),
        ModelConfig("R101x1", _BIT_UNITS[101], 1),
        ModelConfig("R101x3", _BIT_UNITS[101], 3),
        ModelConfig("R152x2", _BIT_UNITS[152], 2),
        ModelConfig("R152x4", _BIT_UNITS[152], 4),
        ModelConfig("R14x0.25", (1, 1, 1, 1), 0.25, gn_groups=16, teaching=True),
        ModelConfig("R26x0.25", (2, 2, 2, 2), 0.25, gn_groups=16, teaching=True),
        ModelConfig("R26x0.5", (2, 2, 2, 2), 0.5, teaching=True),
        ModelConfig("R50x0.5", _BIT_UNITS[50], 0.5, teaching=True),
    ]
}

#: The names under which BiT checkpoints were released, e.g. "BiT-M-R50x1".
RELEASED_SIZES = ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4")


def list_models(teaching: bool | None = None) -> list[str]:
    """Known model names; ``teaching=True/False`` filters to teaching / released sizes."""
    return [n for n, c in CONFIGS.items() if teaching is None or c.teaching == teaching]


def get_config(name: str) -> ModelConfig:
    """Look up a size by name. Accepts "R50x1", "r50x1", "BiT-M-R50x1" and timm's "resnetv2_50x1_bit"."""
    key = _canonical_name(name)
    if key not in CONFIGS:
        import difflib

        close = difflib.get_close_matches(key, CONFIGS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} Known models: {', '.join(CONFIGS)} "
            "(bitkit.models.list_models())."
        )
    return CONFIGS[key]


def _canonical_name(name: str) -> str:
    s = name.strip()
    s = re.sub(r"^BiT-[SML]-", "", s, flags=re.IGNORECASE)
    m = re.fullmatch(r"resnetv2_(\d+)x(\d+)_bit(?:\..*)?", s, flags=re.IGNORECASE)
    if m:
        s = f"R{m.group(1)}x{m.group(2)}"
    if s[:1] in "r":
        s = "R" + s[1:]
    return s


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def standardize_weight(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """Weight Standardization (Qiao et al., 2019): zero mean, unit variance per output channel.

    Statistics run over (in, kh, kw) with the population (biased) variance, as in the released
    BiT code. Implemented with ``F.batch_norm`` on the weight viewed as (1, out, in*kh*kw): one
    fused kernel forward and backward. bench/model_throughput.py measured it against an explicit
    ``var_mean`` formulation (numbers in bench/README.md).
    """
    out_channels = weight.shape[0]
    w = F.batch_norm(
        weight.reshape(1, out_channels, -1), None, None, training=True, momentum=0.0, eps=eps
    )
    return w.reshape_as(weight)


class StdConv2d(nn.Conv2d):
    """Conv2d whose weight is standardized on every forward pass (paper 4.3)."""

    def __init__(self, *args, eps: float = WS_EPS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = standardize_weight(self.weight, self.eps)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _Layers:
    """Builds convs and norms for one model so the ablation switches live in one place."""

    def __init__(self, norm: Norm, conv: Conv, gn_groups: int, ws_eps: float) -> None:
        if norm not in ("group", "batch"):
            raise ValueError(f"norm must be 'group' (BiT) or 'batch' (ablation), not {norm!r}")
        if conv not in ("standardized", "plain"):
            raise ValueError(
                f"conv must be 'standardized' (BiT) or 'plain' (ablation), not {conv!r}"
            )
        self.norm_kind, self.conv_kind = norm, conv
        self.gn_groups, self.ws_eps = gn_groups, ws_eps

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
        # 3x3 convs pad 1, 1x1 pad 0, the 7x7 stem pads 3: "same" for odd kernels.
        kw = dict(kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False)
        if self.conv_kind == "standardized":
            return StdConv2d(cin, cout, eps=self.ws_eps, **kw)
        return nn.Conv2d(cin, cout, **kw)

    def norm(self, channels: int) -> nn.Module:
        if self.norm_kind == "batch":
            return nn.BatchNorm2d(channels)
        if channels % self.gn_groups:
            raise ValueError(
                f"GroupNorm with {self.gn_groups} groups cannot split {channels} channels; "
                "choose a width whose channel counts are multiples of gn_groups."
            )
        return nn.GroupNorm(self.gn_groups, channels, eps=1e-5)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck unit (He et al., 2016, "Identity mappings").

    ``out = conv1x1(relu(gn1(x)))``, then a strided 3x3 and a 1x1, each preceded by GN + ReLU,
    added to the shortcut with no activation after the sum. The projection shortcut (when the
    shape changes) reads the *pre-activated* input, like the released model.
    """

    def __init__(self, layers: _Layers, cin: int, cmid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.norm1 = layers.norm(cin)
        self.conv1 = layers.conv(cin, cmid, 1)
        self.norm2 = layers.norm(cmid)
        self.conv2 = layers.conv(cmid, cmid, 3, stride)
        self.norm3 = layers.norm(cmid)
        self.conv3 = layers.conv(cmid, cout, 1)
        self.proj = layers.conv(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLUs are safe here: GN/BN backward needs their *input*, not their output.
        out = F.relu(self.norm1(x), inplace=True)
        shortcut = self.proj(out) if self.proj is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.norm2(out), inplace=True))
        out = self.conv3(F.relu(self.norm3(out), inplace=True))
        return out + shortcut


class Stem(nn.Module):
    """7x7/2 conv, then zero padding of 1 and a 3x3/2 max-pool: 224 -> 112 -> 56.

    The padding is explicit zeros, not ``MaxPool2d(padding=1)`` (which pads with -inf): the stem
    has no norm or ReLU, so its outputs can be negative and the two differ at the border.
    """

    def __init__(self, layers: _Layers, channels: int) -> None:
        super().__init__()
        self.conv = layers.conv(3, channels, 7, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.max_pool2d(F.pad(x, (1, 1, 1, 1)), kernel_size=3, stride=2)


class Stage(nn.Module):
    def __init__(self, layers: _Layers, cin: int, cmid: int, cout: int, n: int, stride: int):
        super().__init__()
        self.units = nn.ModuleList(
            PreActBottleneck(layers, cin if i == 0 else cout, cmid, cout, stride if i == 0 else 1)
            for i in range(n)
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(unit, x, use_reentrant=False)
            else:
                x = unit(x)
        return x


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class ResNetV2(nn.Module):
    """BiT's ResNet-v2. ``forward`` gives logits; ``features`` gives the pre-logits vector."""

    def __init__(
        self,
        config: ModelConfig | str,
        num_classes: int = 1000,
        *,
        norm: Norm = "group",
        conv: Conv = "standardized",
        ws_eps: float = WS_EPS,
        dropout: float = 0.0,
        zero_head: bool = True,
    ) -> None:
        super().__init__()
        self.config = get_config(config) if isinstance(config, str) else config
        self.norm_kind, self.conv_kind, self.ws_eps = norm, conv, ws_eps
        layers = _Layers(norm, conv, self.config.gn_groups, ws_eps)
        c = self.config
        self.stem = Stem(layers, c.stem_channels)
        stages, cin = [], c.stem_channels
        for i, ((cmid, cout), n) in enumerate(zip(c.stage_channels, c.units, strict=True)):
            stages.append(Stage(layers, cin, cmid, cout, n, stride=1 if i == 0 else 2))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.norm = layers.norm(c.num_features)
        # Penultimate-layer dropout: part of the random-search space (supplementary A); 0 in BiT.
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Conv2d(c.num_features, num_classes, kernel_size=1, bias=True)
        self._init_weights(zero_head)

    # -- construction --------------------------------------------------------------------------

    def _init_weights(self, zero_head: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.head:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._init_head(zero_head)

    def _init_head(self, zero: bool) -> None:
        if zero:
            # Transfer (paper 3.3): the new head starts at zero, so fine-tuning begins from the
            # pre-trained representation with uniform predictions and no random projection noise.
            nn.init.zeros_(self.head.weight)
        else:
            nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(self.num_features))
        nn.init.zeros_(self.head.bias)

    @property
    def num_features(self) -> int:
        return self.config.num_features

    @property
    def num_classes(self) -> int:
        return self.head.out_channels

    @property
    def name(self) -> str:
        return self.config.name

    def reset_head(self, num_classes: int, zero_init: bool = True) -> ResNetV2:
        """Replace the classifier for a new task (zero-initialised by default, as in BiT)."""
        ref = self.head.weight
        self.head = nn.Conv2d(self.num_features, num_classes, kernel_size=1, bias=True).to(
            device=ref.device, dtype=ref.dtype
        )
        self._init_head(zero_init)
        return self

    def set_grad_checkpointing(self, enabled: bool = True) -> ResNetV2:
        """Recompute each unit's activations in backward: ~1 extra forward for far less memory.

        Useful for the x3/x4 sizes at 480 px, where activations, not weights, fill the GPU.
        """
        for stage in self.stages:
            stage.grad_checkpointing = enabled
        return self

    # -- forward -------------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map after the final GN + ReLU: (B, 2048*w, H/32, W/32)."""
        _check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return F.relu(self.norm(x), inplace=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logits: the globally pooled representation used for few-shot and dedup."""
        return self.forward_features(x).mean(dim=(2, 3))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from pre-logits (B, C)."""
        x = self.dropout(feats)[:, :, None, None]
        return self.head(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.features(x))

    def extra_repr(self) -> str:
        return (
            f"config={self.config.name}, norm={self.norm_kind}, conv={self.conv_kind}, "
            f"ws_eps={self.ws_eps:g}"
        )


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"ResNetV2 expects images as (batch, 3, height, width); got shape {tuple(x.shape)}. "
            "Use bitkit.data transforms, which give channels-first tensors in [-1, 1]."
        )
