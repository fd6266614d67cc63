"""Building blocks shared by every EfficientNet variant.

Padding helpers (symmetric or TensorFlow 'SAME'), conv-BN-activation, squeeze-and-excitation,
stochastic depth, the MBConv block (which also covers the depthwise-separable first stage) and
EfficientNetV2's Fused-MBConv.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

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
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def same_padding_amounts(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one spatial dimension as (before, after).

    The output has ``ceil(size / stride)`` positions; when the total padding is odd, the extra
    row or column goes after (right/bottom), as in TensorFlow.
    """
    span = (kernel_size - 1) * dilation + 1
    if span >= stride:
        # Never negative here, so no max(): under symbolic shapes (torch.compile with dynamic
        # sizes) the output size then simplifies to ceil(size / stride) instead of nesting
        # ever deeper expressions through the network.
        total = (size + stride - 1) // stride * stride - stride + span - size
    else:
        total = max((-(-size // stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def needs_dynamic_padding(kernel_size: int, stride: int, dilation: int = 1) -> bool:
    """Whether TF 'SAME' padding depends on the input size (else it equals symmetric padding)."""
    return stride > 1 or ((kernel_size - 1) * dilation) % 2 == 1


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """Weight gradient of a depthwise conv, computed as one grouped convolution.

    ``dW[c, i, j] = sum_{n, y, x} g[n, c, y, x] * xpad[n, c, s*y + i, s*x + j]``: a correlation of
    each (sample, channel) plane of the padded input with its output gradient, dilated by the
    stride. Folding the batch into the channels makes it a single grouped conv, several times
    faster on the CPU than the generic depthwise weight-gradient kernel for 5x5 kernels.
    """
    batch, channels = x.shape[:2]
    x = F.pad(x, [padding[1], padding[1], padding[0], padding[0]])
    if grad_out.shape[-2:] == (1, 1):
        # One output position: the correlation is a product with the input's top-left window
        # (a grouped conv with 1x1 kernels is many times slower here).
        window = x[..., : kernel_size[0], : kernel_size[1]] * grad_out
        return window.sum(0).unsqueeze(1)
    x = x.contiguous()
    planes = x.view(1, batch * channels, x.shape[-2], x.shape[-1])
    kernels = grad_out.contiguous().view(batch * channels, 1, grad_out.shape[-2], grad_out.shape[-1])
    corr = F.conv2d(planes, kernels, dilation=stride, groups=batch * channels)
    corr = corr[..., : kernel_size[0], : kernel_size[1]]
    return corr.reshape(batch, channels, kernel_size[0], kernel_size[1]).sum(0).unsqueeze(1)


class _DepthwiseConv2dFunction(torch.autograd.Function):
    """Depthwise conv whose backward computes the weight gradient with :func:`depthwise_weight_grad`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # Autocast would cast inside conv2d and leave backward with mixed dtypes, which only
            # oneDNN's native-bf16 kernels accept (AVX-512 BF16): cast here, once, for both passes.
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        with torch.autocast(x.device.type, enabled=False):
            return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.to(x.dtype)  # autograd casts the returned gradients to the inputs' dtypes
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0],
                x.shape[1], [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = depthwise_weight_grad(x, grad_out, weight.shape[-2:], ctx.stride, ctx.padding)
        return grad_x, grad_weight, None, None


def reachable_taps(size: int, kernel_size: int, stride: int, padding: int) -> tuple[int, int]:
    """The kernel taps ``[first, last)`` that ever meet the input along one axis.

    A tap ``i`` reads input index ``stride * y + i - padding``; with an input smaller than the
    padded kernel (a 5x5 kernel on a 1x1 or 2x2 map, as in the last stages at small image
    sizes) the outer taps only ever meet zero padding. Dropping them gives the same output.
    """
    outputs = (size + 2 * padding - kernel_size) // stride + 1
    return max(0, padding - stride * (outputs - 1)), min(kernel_size, size + padding)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) with faster CPU paths in eager mode.

    oneDNN spends milliseconds on convolutions whose maps are tiny, as in the SE modules (1x1
    maps at any image size) and the last stages at small image sizes. So, on CPU tensors:
    pointwise convs on 1x1 maps run as ``F.linear`` (3-4x faster with their backward);
    depthwise convs on inputs smaller than their padded kernel run with the kernel cropped to
    the taps that meet the input (:func:`reachable_taps`; a 1x1 kernel is a per-channel
    product); bias-free depthwise convs get a faster weight gradient when gradients are
    needed: on NCHW tensors with kernels of 5 or more or on maps of 2x2 or less, in
    channels_last on maps of 2x2 or less, or up to 4x4 with kernels of 5 or more (1.2-1.5x
    with the input gradient; on larger channels_last maps PyTorch's own kernel is as fast or
    faster, and the fast path copies to NCHW). None of this applies under TorchScript,
    tracing, ``torch.compile`` or export, which generate their own graphs: there, and
    everywhere else, it is the plain ``F.conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._eager_on_cpu(x):
            return self._eager_cpu_conv(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    @torch.jit.unused
    def _eager_on_cpu(self, x):  # unannotated: TorchScript never compiles it
        return (x.device.type == "cpu" and self.dilation == (1, 1)
                and not (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()))

    @torch.jit.unused
    def _eager_cpu_conv(self, x):
        if (self.groups == 1 and self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
                and x.shape[-2:] == (1, 1)):
            return F.linear(x.flatten(1), self.weight.flatten(1), self.bias)[..., None, None]
        if self._is_bias_free_depthwise():
            return self._depthwise(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    @torch.jit.unused
    def _is_bias_free_depthwise(self):
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels and self.bias is None

    @torch.jit.unused
    def _fast_depthwise_backward_applies(self, x):
        size, large_kernel = max(x.shape[-2:]), self.kernel_size[0] >= 5
        if x.is_contiguous():
            pays = large_kernel or size <= 2
        else:  # channels_last: PyTorch's kernel is slow only on the smallest maps
            pays = x.is_contiguous(memory_format=torch.channels_last) and (size <= 2 or (large_kernel and size <= 4))
        return (pays and self._is_bias_free_depthwise() and torch.is_grad_enabled() and self.weight.requires_grad
                and self._eager_on_cpu(x))

    @torch.jit.unused
    def _depthwise(self, x):
        weight, padding = self.weight, self.padding
        taps = [reachable_taps(x.shape[axis + 2], self.kernel_size[axis], self.stride[axis], self.padding[axis])
                for axis in (0, 1)]
        if any(last - first < self.kernel_size[axis] for axis, (first, last) in enumerate(taps)):
            (top, bottom), (left, right) = taps
            weight = weight[..., top:bottom, left:right]
            padding = (self.padding[0] - top, self.padding[1] - left)
            if weight.shape[-2:] == (1, 1) and self.stride == (1, 1) and padding == (0, 0):
                return x * weight.view(1, -1, 1, 1)
        if self._fast_depthwise_backward_applies(x):
            return _DepthwiseConv2dFunction.apply(x, weight, self.stride, padding)
        return F.conv2d(x, weight, None, self.stride, padding, 1, self.groups)


class Conv2dSame(Conv2d):
    """A Conv2d with TensorFlow 'SAME' padding, computed from each input's size.

    Holds the same parameters as ``nn.Conv2d``, so state dicts move freely between the two.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = same_padding_amounts(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = same_padding_amounts(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        return self._conv(F.pad(x, [pad_w[0], pad_w[1], pad_h[0], pad_h[1]]))


def create_conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1, bias: bool = False, padding: PaddingMode = "symmetric") -> nn.Conv2d:
    """A conv with symmetric ``k // 2`` padding, or TF 'SAME' padding where it differs."""
    if padding not in ("symmetric", "same"):
        raise ConfigError(f"unknown padding {padding!r}; choose 'symmetric' or 'same'")
    if padding == "same" and needs_dynamic_padding(kernel_size, stride):
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias)
    return Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
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
            raise ConfigError(f"unknown padding {self.padding!r}; choose 'symmetric' or 'same'")

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
        self.reduce = Conv2d(channels, reduced_channels, 1, bias=True)
        self.act = make_activation(activation)
        self.expand = Conv2d(reduced_channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.expand(self.act(self.reduce(scale)))
        return x * scale.sigmoid()


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of random samples while training.

    Kept samples are scaled by ``1 / (1 - drop_prob)``; in eval mode this is the identity.
    Given the ``shortcut``, returns ``shortcut + drop_path(x)`` in one fused pass (the residual
    add of a block).
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ConfigError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x if shortcut is None else x + shortcut
        keep_prob = 1.0 - self.drop_prob
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        mask = mask.bernoulli_(keep_prob).div_(keep_prob)
        return x * mask if shortcut is None else torch.addcmul(shortcut, x, mask)

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
        self.drop_path = DropPath(drop_path_rate) if self.has_residual else None

    def zero_init_last(self) -> None:
        """Zero the project BatchNorm's scale, so that the block starts as the identity: the
        residual branch adds nothing until training grows it (zero-gamma, Goyal et al. 2017)."""
        nn.init.zeros_(self.project.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        if self.drop_path is not None:  # the residual add, through stochastic depth
            return self.drop_path(out, x)
        return out


class FusedMBConv(nn.Module):
    """EfficientNetV2's Fused-MBConv: one full kxk conv expands (and strides), a 1x1 conv
    projects, with the residual as in :class:`MBConv`.

    With ``expand_ratio == 1`` the block is the kxk conv alone (BN and activation included), with
    no projection. No SE: the reference has none in its fused stages. ``expand`` always holds the
    kxk conv; ``project`` is the 1x1 projection, or an identity for the single-conv form.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int, drop_path_rate: float = 0.0, options: LayerOptions = LayerOptions()) -> None:
        super().__init__()
        mid_channels = in_channels * expand_ratio if expand_ratio != 1 else out_channels
        self.has_residual = stride == 1 and in_channels == out_channels
        self.expand = ConvBnAct(in_channels, mid_channels, kernel_size, stride, options=options)
        self.project = (ConvBnAct(mid_channels, out_channels, 1, options=options, activate=False)
                        if expand_ratio != 1 else nn.Identity())
        self.drop_path = DropPath(drop_path_rate) if self.has_residual else None

    def zero_init_last(self) -> None:
        """Zero the last BatchNorm's scale so that the block starts as the identity (see
        :meth:`MBConv.zero_init_last`; for the single-conv form the activation of zero is zero)."""
        last = self.project if isinstance(self.project, ConvBnAct) else self.expand
        nn.init.zeros_(last.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.expand(x))
        if self.drop_path is not None:
            return self.drop_path(out, x)
        return out
