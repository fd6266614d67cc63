"""Fold BatchNorm into the convolution before it, for inference.

An eval-mode BN is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``,
so it can live inside the preceding conv's weight and bias: one op less per layer, same outputs.
Works for every conv of the package, the TF-'SAME' :class:`~effnet.layers.Conv2dSame` included,
because folding only touches the parameters, never the conv's forward.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import ConfigError


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Rewrite ``conv``'s weight and bias in place so that ``conv(x) == bn(conv(x))`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if conv.out_channels != bn.num_features:
        raise ConfigError(f"conv has {conv.out_channels} output channels but BatchNorm has {bn.num_features}")
    with torch.no_grad():
        weight = conv.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64,
                                                                            device=weight.device)
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(bias)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(bias)
        scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
        folded_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        folded_bias = (bias - bn.running_mean.double()) * scale + beta
        conv.weight.copy_(folded_weight.to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(folded_bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(folded_bias.to(conv.bias.dtype))


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The model in eval mode with every conv->BN pair folded into the conv (BN becomes Identity).

    A pair is a module holding a ``conv`` (``nn.Conv2d`` or a subclass) and a ``bn``
    (``nn.BatchNorm2d``), as :class:`~effnet.layers.ConvBnAct` does. The input model is left
    untouched unless ``inplace``. The result is for inference only: training it would train
    the folded parameters without BN.
    """
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    for module in target.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            fold_conv_bn(conv, bn)
            module.bn = nn.Identity()
    return target


def count_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers a model still has (0 after :func:`fold_batchnorm` on an EfficientNet)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
