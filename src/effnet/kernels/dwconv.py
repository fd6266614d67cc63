"""Depthwise conv + bias + activation, with the SE squeeze (per-channel sums) in the same pass.

:func:`dwconv_act_squeeze` is the one entry point: the Triton kernel where it can run (see
:func:`~effnet.kernels.kernels_run_on`), else :func:`dwconv_act_squeeze_reference`,
the eager computation with the same meaning. The output is channels_last; the sums are fp32
sums over the output positions of the activation as stored (in the output's dtype), so
``sums / (OH * OW)`` is the SE module's global average. ``input_bias`` and
``input_activation`` are the epilogue of the conv before (a 1x1 expansion), applied to the
input as it is read: that conv then writes its raw output and no pass of its own adds its
bias and activates.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..layers import same_padding_amounts
from ._triton import jit, kernels_run_on

ACTIVATIONS = ("identity", "silu", "relu", "relu6")
"""The activations the kernel applies (``swish`` is ``silu``)."""
Padding = tuple[int, int, int, int]
"""Explicit padding ``(top, bottom, left, right)``."""


def activation_code(name: str) -> int:
    """The kernel's code for an activation name; a ConfigError for one it does not apply."""
    name = "silu" if name == "swish" else name
    if name not in ACTIVATIONS:
        raise ConfigError(f"the depthwise kernel applies {', '.join(ACTIVATIONS)}, not {name!r}")
    return ACTIVATIONS.index(name)


def conv_padding(height: int, width: int, kernel_size: int, stride: int, same: bool) -> Padding:
    """``(top, bottom, left, right)`` of a conv: TF 'SAME' (``same``, from the input size) or ``k // 2``."""
    if same:
        return (*same_padding_amounts(height, kernel_size, stride), *same_padding_amounts(width, kernel_size, stride))
    half = kernel_size // 2
    return half, half, half, half


def output_size(size: int, kernel_size: int, stride: int, before: int, after: int) -> int:
    """Output positions of a conv along one axis padded by ``before`` and ``after``."""
    return (size + before + after - kernel_size) // stride + 1


def activate_(x: torch.Tensor, activation: str) -> torch.Tensor:
    """``x`` activated in place by one of :data:`ACTIVATIONS`."""
    code = activation_code(activation)
    if code == 1:
        return F.silu(x, inplace=True)
    if code == 2:
        return F.relu(x, inplace=True)
    if code == 3:
        return F.relu6(x, inplace=True)
    return x


def dwconv_act_squeeze_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int,
                                 padding: Padding, activation: str = "silu", squeeze: bool = True,
                                 input_bias: torch.Tensor | None = None, input_activation: str = "identity"
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eager depthwise conv ``weight`` (C, 1, k, k) + ``bias`` + activation on
    ``input_activation(x + input_bias)`` (``x``: N, C, H, W), padded by ``padding``; returns the
    activation (channels_last) and, with ``squeeze``, its fp32 sum over the spatial positions (N, C)."""
    if input_bias is not None:
        x = activate_(x + input_bias.view(1, -1, 1, 1), input_activation)
    elif input_activation != "identity":
        x = activate_(x.clone(), input_activation)
    top, bottom, left, right = padding
    if (top, left) == (bottom, right):  # the conv pads without a copy of the input
        y = F.conv2d(x, weight, bias, stride, (top, left), 1, x.shape[1])
    else:
        y = F.conv2d(F.pad(x, [left, right, top, bottom]), weight, bias, stride, 0, 1, x.shape[1])
    y = activate_(y, activation).contiguous(memory_format=torch.channels_last)
    return y, y.float().sum((2, 3)) if squeeze else None


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: Padding,
           input_bias: torch.Tensor | None) -> None:
    if x.dim() != 4:
        raise ConfigError(f"the depthwise conv takes an NxCxHxW tensor, got {list(x.shape)}")
    channels = x.shape[1]
    kernel_size = weight.shape[-1]
    biases_fit = tuple(bias.shape) == (channels,) and (input_bias is None or tuple(input_bias.shape) == (channels,))
    if tuple(weight.shape) != (channels, 1, kernel_size, kernel_size) or not biases_fit:
        raise ConfigError(f"depthwise weight {list(weight.shape)} / biases do not fit {channels} channels "
                          "(expected [C, 1, k, k] and [C])")
    if stride < 1 or len(padding) != 4 or min(padding) < 0:
        raise ConfigError(f"invalid stride {stride} or padding {padding}")


def dwconv_act_squeeze(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: Padding,
                       activation: str = "silu", squeeze: bool = True, input_bias: torch.Tensor | None = None,
                       input_activation: str = "identity", block_p: int = 64, block_c: int = 64,
                       num_warps: int = 8) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`dwconv_act_squeeze_reference`, in one pass of the Triton kernel where it runs.

    ``x`` is best channels_last (the kernel reads any layout; channels_last is the coalesced
    one, read in 16-byte vectors when the channels are a multiple of 16). ``block_p`` x
    ``block_c`` is the tile (output positions x channels, powers of two) and ``num_warps`` its
    threads: 64 x 64 on 8 warps compiles for sm_90 to 48-79 registers and no spills for k = 3
    and 5 (4 warps: up to 189 registers). It runs as the custom op
    ``torch.ops.effnet.dwconv_act_squeeze``, which ``torch.compile`` and ``torch.export`` keep
    whole.
    """
    _check(x, weight, bias, stride, padding, input_bias)
    activation_code(activation), activation_code(input_activation)
    y, sums = torch.ops.effnet.dwconv_act_squeeze(x, weight, bias, stride, list(padding), activation, squeeze,
                                                  input_bias, input_activation, block_p, block_c, num_warps)
    return y, sums if squeeze else None


def _output_shape(x: torch.Tensor, kernel_size: int, stride: int, padding: list[int]) -> tuple[int, ...]:
    top, bottom, left, right = padding
    return (x.shape[0], x.shape[1], output_size(x.shape[2], kernel_size, stride, top, bottom),
            output_size(x.shape[3], kernel_size, stride, left, right))


@torch.library.custom_op("effnet::dwconv_act_squeeze", mutates_args=())
def _dwconv_act_squeeze_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int,
                           padding: list[int], activation: str, squeeze: bool, input_bias: torch.Tensor | None,
                           input_activation: str, block_p: int, block_c: int, num_warps: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The op behind :func:`dwconv_act_squeeze`: the kernel, or the eager reference where it
    cannot run. Without ``squeeze`` the sums are a placeholder of one zero."""
    if not kernels_run_on(x):
        y, sums = dwconv_act_squeeze_reference(x, weight, bias, stride, tuple(padding), activation, squeeze,
                                               input_bias, input_activation)
        return y, sums if sums is not None else x.new_zeros(1, dtype=torch.float32)
    from ._dwconv_triton import dwconv_act_squeeze_kernel

    kernel_size = weight.shape[-1]
    batch, channels, height, width = x.shape
    out_h, out_w = _output_shape(x, kernel_size, stride, padding)[2:]
    y = torch.empty((batch, channels, out_h, out_w), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last)
    sums = torch.zeros((batch, channels) if squeeze else (1,), dtype=torch.float32, device=x.device)
    block_c = min(block_c, max(16, 1 << (channels - 1).bit_length()))
    block_p = min(block_p, max(16, 1 << (out_h * out_w - 1).bit_length()))
    tiles = -(-out_h * out_w // block_p)
    grid = (batch * tiles, -(-channels // block_c))
    # the kernel indexes the taps and biases as dense; x and y go by their strides
    weight, bias = weight.contiguous(), bias.contiguous()
    in_bias = bias if input_bias is None else input_bias.contiguous()  # a placeholder without IN_BIAS
    # Triton launches on the current device's current stream, whatever device the tensors are on
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        jit(dwconv_act_squeeze_kernel)[grid](
            x, in_bias, weight, bias, y, sums, channels, height, width, out_h, out_w, tiles, *x.stride(),
            *y.stride(), STRIDE=stride, PAD_TOP=padding[0], PAD_LEFT=padding[2], K=kernel_size,
            IN_BIAS=input_bias is not None, IN_ACT=activation_code(input_activation),
            ACT=activation_code(activation), SQUEEZE=squeeze, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps)
    return y, sums


@_dwconv_act_squeeze_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: list[int], activation: str,
      squeeze: bool, input_bias: torch.Tensor | None, input_activation: str, block_p: int, block_c: int,
      num_warps: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.empty(_output_shape(x, weight.shape[-1], stride, padding), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last)
    return y, x.new_empty((x.shape[0], x.shape[1]) if squeeze else (1,), dtype=torch.float32)
