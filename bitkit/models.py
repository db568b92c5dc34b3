"""Models by name: ``create("R50x1", num_classes=10, weights=path)``, the sizes, parameter counts.

This is the module to import. The architecture itself (ResNet-v2 with Group Normalization and
Weight Standardization, its sizes and the ablation switches of Tables 4 and 5) is defined in
:mod:`bitkit.resnetv2`, the checkpoint formats in :mod:`bitkit.weights`; every public name of
``bitkit.resnetv2`` is re-exported here, so ``bitkit.models.ResNetV2``, ``get_config``,
``list_models``, ``standardize_weight``, ``WS_EPS``, ... are the names to use.

Dependencies run one way, ``models`` -> ``weights`` -> ``resnetv2``: ``weights`` builds and
checks a ``ResNetV2`` without knowing about ``create``, and ``create`` loads a file through
``weights`` without ``weights`` importing this module back.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from bitkit import weights as _weights
from bitkit.resnetv2 import (
    CONFIGS,
    RELEASED_SIZES,
    WS_EPS,
    Conv,
    ModelConfig,
    Norm,
    PreActBottleneck,
    ResNetV2,
    Stage,
    StdConv2d,
    Stem,
    get_config,
    list_models,
    standardize_weight,
)

__all__ = [
    "CONFIGS", "RELEASED_SIZES", "WS_EPS", "Conv", "ModelConfig", "Norm", "PreActBottleneck",
    "ResNetV2", "Stage", "StdConv2d", "Stem", "count_parameters", "create", "get_config",
    "list_models", "parameter_table", "standardize_weight",
]


def create(
    name: str,
    num_classes: int = 1000,
    weights: str | None = None,
    *,
    norm: Norm = "group",
    conv: Conv = "standardized",
    ws_eps: float = WS_EPS,
    dropout: float = 0.0,
    zero_head: bool = True,
    keep_head: bool = False,
    grad_checkpointing: bool = False,
    device: str | torch.device | None = None,
) -> ResNetV2:
    """Build a model by name, optionally loading weights (.npz, .safetensors or .pt state dict).

    With ``weights`` the body comes from the file and the head (weight and bias) is
    zero-initialised whatever the class counts, and a message says so: that is BiT transfer,
    which re-trains the head even from ILSVRC-2012 to a 1,000-class task (paper 4.1).
    ``keep_head=True`` restores the file's head instead, to predict or evaluate with a
    fine-tuned file; it needs ``num_classes`` equal to the file's (a ``ValueError`` says both).
    See :func:`bitkit.weights.load`.

    >>> m = create("R14x0.25", num_classes=10)
    """
    if keep_head and weights is None:
        raise ValueError("create(..., keep_head=True) restores the head of a weights file; "
                         "pass weights=PATH, or drop keep_head")
    on_meta = device is not None and str(device) == "meta"
    # On the meta device the model has shapes but no storage: parameter counts of R152x4 for free.
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        model = ResNetV2(get_config(name), num_classes, norm=norm, conv=conv, ws_eps=ws_eps,
                         dropout=dropout, zero_head=zero_head)
    if weights is not None:
        _weights.load(model, weights, keep_head=keep_head)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    if device is not None and not on_meta:
        model.to(device)
    return model


def count_parameters(model: nn.Module, *, include_head: bool = True) -> int:
    head = getattr(model, "head", None)
    skip = set(map(id, head.parameters())) if (head is not None and not include_head) else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def parameter_table(names: list[str] | None = None, num_classes: int = 1000) -> list[dict]:
    """Parameter counts of each size, built on the meta device (no memory, any size)."""
    rows = []
    for n in names or list_models():
        m = create(n, num_classes=num_classes, device="meta")
        rows.append(
            {
                "model": n,
                "depth": m.config.depth,
                "width": m.config.width,
                "features": m.num_features,
                "backbone_params": count_parameters(m, include_head=False),
                "params": count_parameters(m),
            }
        )
    return rows
