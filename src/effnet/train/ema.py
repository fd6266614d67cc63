"""Exponential moving average of a model's weights (the reference evaluates these)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters then buffers, in a fixed order (a state dict's tensors, without building one
    every step: that took longer than the averaging)."""
    return [*module.parameters(), *module.buffers()]


class ModelEMA:
    """A frozen copy of the model whose weights trail the trained ones.

    After each optimizer update: ``ema = decay * ema + (1 - decay) * weights`` for parameters
    and floating buffers (BatchNorm running statistics); integer buffers are copied. With
    ``warmup``, the decay starts low, ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates,
    so that short runs are not dominated by the random initialization.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        ema_floats, model_floats, ema_counts, model_counts = [], [], [], []
        for ema_tensor, tensor in zip(_tensors(self.module), _tensors(model), strict=True):
            floating = ema_tensor.is_floating_point()
            (ema_floats if floating else ema_counts).append(ema_tensor)
            (model_floats if floating else model_counts).append(tensor.detach())
        torch._foreach_lerp_(ema_floats, model_floats, 1.0 - decay)
        if ema_counts:  # BatchNorm's num_batches_tracked: copied, in one call rather than one each
            torch._foreach_copy_(ema_counts, model_counts)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
