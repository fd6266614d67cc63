"""The SE gate applied inside the 1x1 projection that follows it, instead of in a pass of its own.

``conv1x1(x * g_n) == x @ (W * g_n)^T`` for each sample ``n``: scaling the projection's weights
by the gate (N matrices of C_in x C_out) replaces a multiply over the whole activation
(N x C_in x H x W), the largest tensor of the block. That pays while the activation is the
larger (``H * W >= C_out``: the early, high-resolution stages); on small late maps the plain
multiply then the conv is cheaper. :func:`gated_pointwise` decides per call from the shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def gate_in_weights(positions: int, out_channels: int) -> bool:
    """Whether folding the gate into per-sample weights moves less memory than gating the input:
    the gated weights are ``C_in x C_out`` per sample, the gated input ``C_in x H*W``."""
    return positions >= out_channels


def gated_pointwise_reference(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                              bias: torch.Tensor | None) -> torch.Tensor:
    """``conv1x1(x * gate)``: ``x`` (N, C, H, W), ``gate`` (N, C), ``weight`` (C_out, C[, 1, 1])."""
    weight = weight.reshape(weight.shape[0], -1, 1, 1)
    return F.conv2d(x * gate.to(x.dtype)[:, :, None, None], weight, bias)


def gated_pointwise(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`gated_pointwise_reference`, with the gate folded into the weights where that pays
    (:func:`gate_in_weights`). The result is channels_last, like ``x`` should be."""
    batch, channels, height, width = x.shape
    out_channels = weight.shape[0]
    if tuple(gate.shape) != (batch, channels) or weight[0].numel() != channels:
        raise ConfigError(f"gate {list(gate.shape)} / weight {list(weight.shape)} do not fit an input "
                          f"{list(x.shape)} (expected [N, C] and [C_out, C, 1, 1])")
    if not gate_in_weights(height * width, out_channels):
        return gated_pointwise_reference(x, gate, weight, bias).contiguous(memory_format=torch.channels_last)
    rows = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # a view when x is channels_last
    gated = weight.reshape(out_channels, channels).t().unsqueeze(0) * gate.to(x.dtype).unsqueeze(2)
    if bias is None:
        out = torch.bmm(rows, gated)
    else:
        out = torch.baddbmm(bias.to(x.dtype).view(1, 1, out_channels), rows, gated)
    return out.view(batch, height, width, out_channels).permute(0, 3, 1, 2)
