"""Static measurements of a network: parameter count and multiply-accumulates."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..factory import create_model
from ..model import EfficientNetConfig


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, resolution: int | tuple[int, int], in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass of one image, counted on the meta device.

    ``torch.utils.flop_counter`` reports FLOPs (2 per MAC) for convolutions and matrix
    products; element-wise work (BN, activations, SE gating) is not counted, as in the
    published tables. The model is not touched: a meta-device copy is measured.
    """
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    meta_model = _meta_copy(model).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(torch.empty(1, in_chans, height, width, device="meta"))
    return counter.get_total_flops() // 2


def _meta_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` with every tensor on the meta device (no memory, no time)."""
    memo = {id(t): torch.empty_like(t, device="meta") for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


@dataclass(frozen=True)
class ModelSummary:
    """Size and cost of a network at its native resolution."""

    name: str
    params: int
    macs: int
    resolution: int
    width: float
    depth: float


def summarize(name: str | EfficientNetConfig, num_classes: int = 1000) -> ModelSummary:
    """Parameters and MACs of a named network (or config), counted without allocating weights."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    config = model.config
    label = name if isinstance(name, str) else model.model_name
    return ModelSummary(label, count_params(model), count_macs(model, config.resolution, config.in_chans),
                        config.resolution, config.width, config.depth)
