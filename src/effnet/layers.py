"""Building blocks shared by every EfficientNet variant.

Padding helpers (symmetric or TensorFlow 'SAME'), conv-BN-activation, squeeze-and-excitation,
stochastic depth and the MBConv block (which also covers the depthwise-separable first stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

PaddingMode = Literal["symmetric", "same"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": partial(nn.SiLU, inplace=True),
    "swish": partial(nn.SiLU, inplace=True),
    "relu": partial(nn.ReLU, inplace=True),
    "relu6": partial(nn.ReLU6, inplace=True),
    "hardswish": partial(nn.Hardswish, inplace=True),
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (``silu``, ``relu6``, ...)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def same_padding_amounts(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one spatial dimension as (before, after).

    The output has ``ceil(size / stride)`` positions; when the total padding is odd, the extra
    row or column goes after (right/bottom), as in TensorFlow.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def needs_dynamic_padding(kernel_size: int, stride: int, dilation: int = 1) -> bool:
    """Whether TF 'SAME' padding depends on the input size (else it equals symmetric padding)."""
    return stride > 1 or ((kernel_size - 1) * dilation) % 2 == 1


class Conv2dSame(nn.Conv2d):
    """A Conv2d with TensorFlow 'SAME' padding, computed from each input's size.

    Holds the same parameters as ``nn.Conv2d``, so state dicts move freely between the two.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = same_padding_amounts(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = same_padding_amounts(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, [pad_w[0], pad_w[1], pad_h[0], pad_h[1]])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def create_conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1, bias: bool = False, padding: PaddingMode = "symmetric") -> nn.Conv2d:
    """A conv with symmetric ``k // 2`` padding, or TF 'SAME' padding where it differs."""
    if padding not in ("symmetric", "same"):
        raise ValueError(f"unknown padding {padding!r}; choose 'symmetric' or 'same'")
    if padding == "same" and needs_dynamic_padding(kernel_size, stride):
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
                     groups=groups, bias=bias)


@dataclass(frozen=True)
class LayerOptions:
    """Choices every layer of a network shares: activation, padding and BatchNorm settings."""

    activation: str = "silu"
    padding: PaddingMode = "symmetric"
    bn_momentum: float = 0.01
    bn_eps: float = 1e-3

    def __post_init__(self) -> None:
        make_activation(self.activation)
        if self.padding not in ("symmetric", "same"):
            raise ValueError(f"unknown padding {self.padding!r}; choose 'symmetric' or 'same'")

    def act(self) -> nn.Module:
        return make_activation(self.activation)

    def norm(self, channels: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(channels, eps=self.bn_eps, momentum=self.bn_momentum)

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
             groups: int = 1, bias: bool = False) -> nn.Conv2d:
        return create_conv2d(in_channels, out_channels, kernel_size, stride, groups, bias, self.padding)


class ConvBnAct(nn.Sequential):
    """Convolution (no bias), BatchNorm, then the activation (or none, for projections)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, options: LayerOptions = LayerOptions(), activate: bool = True) -> None:
        super().__init__()
        self.conv = options.conv(in_channels, out_channels, kernel_size, stride, groups)
        self.bn = options.norm(out_channels)
        self.act = options.act() if activate else nn.Identity()


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global average, reduce conv, activation, expand conv, sigmoid gate."""

    def __init__(self, channels: int, reduced_channels: int, activation: str = "silu") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced_channels, 1, bias=True)
        self.act = make_activation(activation)
        self.expand = nn.Conv2d(reduced_channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.expand(self.act(self.reduce(scale)))
        return x * scale.sigmoid()


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of random samples while training.

    Kept samples are scaled by ``1 / (1 - drop_prob)``; in eval mode this is the identity.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x * mask.bernoulli_(keep_prob).div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4f}"


class MBConv(nn.Module):
    """Mobile inverted bottleneck: expand 1x1, depthwise kxk, SE, project 1x1, residual.

    With ``expand_ratio == 1`` there is no expand conv (the depthwise-separable first stage).
    The SE width comes from the block's input channels, not the expanded ones. The residual
    (and stochastic depth on it) exists only at stride 1 with equal in and out channels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int, se_ratio: float, drop_path_rate: float = 0.0,
                 options: LayerOptions = LayerOptions()) -> None:
        super().__init__()
        mid_channels = in_channels * expand_ratio
        self.has_residual = stride == 1 and in_channels == out_channels
        self.expand = (ConvBnAct(in_channels, mid_channels, 1, options=options)
                       if expand_ratio != 1 else nn.Identity())
        self.dw = ConvBnAct(mid_channels, mid_channels, kernel_size, stride, groups=mid_channels, options=options)
        self.se = (SqueezeExcite(mid_channels, max(1, int(in_channels * se_ratio)), options.activation)
                   if se_ratio > 0 else nn.Identity())
        self.project = ConvBnAct(mid_channels, out_channels, 1, options=options, activate=False)
        self.drop_path = DropPath(drop_path_rate) if self.has_residual and drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        if self.has_residual:
            out = self.drop_path(out) + x
        return out
