"""Helpers for checking numerics against other implementations (tests and benchmarks).

A freshly initialised network has BatchNorm scale 1, shift 0, running mean 0 and variance 1,
and zero biases: a converter that swaps two such tensors, or a BatchNorm fold that drops one,
still gives the right answer. :func:`randomize_statistics` gives them values of the size that
trained weights have, so equality checks prove something.
"""

from __future__ import annotations

import torch
from torch import nn


def randomize_statistics(model: nn.Module, seed: int = 0, biases: bool = True) -> nn.Module:
    """Random BatchNorm affine terms and running statistics (and, with ``biases``, random
    conv/linear biases), in place; returns the model in eval mode. Conv weights keep their init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            elif biases and isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval()
