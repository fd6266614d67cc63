"""The SE gate folded into the projection (effnet.kernels.gate) against gating then the conv."""

from __future__ import annotations

import pytest
import torch

from effnet.errors import ConfigError
from effnet.kernels import gate_in_weights, gated_pointwise, gated_pointwise_reference

pytest.importorskip("triton")  # as the kernels' other tests


def test_gate_goes_into_the_weights_only_where_it_pays() -> None:
    assert gate_in_weights(112 * 112, 24)  # an early stage: the activation is far larger
    assert not gate_in_weights(7 * 7, 320)  # the last stage: the weights are


@pytest.mark.parametrize(("size", "out_channels"), [(6, 16), (3, 16)])  # gate in the weights, on the input
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_projection_equals_gating_then_conv(size: int, out_channels: int, dtype: torch.dtype) -> None:
    x = torch.randn(3, 12, size, size + 1).contiguous(memory_format=torch.channels_last)
    gate = torch.rand(3, 12)
    weight, bias = torch.randn(out_channels, 12, 1, 1), torch.randn(out_channels)
    expected = torch.nn.functional.conv2d(x * gate[:, :, None, None], weight, bias)
    out = gated_pointwise(x.to(dtype), gate, weight.to(dtype), bias.to(dtype))
    assert out.shape == expected.shape and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 3e-2, "atol": 5e-2}
    torch.testing.assert_close(out.float(), expected, **tolerance)
    torch.testing.assert_close(gated_pointwise_reference(x, gate, weight, bias), expected)


def test_gated_projection_checks_shapes() -> None:
    with pytest.raises(ConfigError, match="do not fit"):
        gated_pointwise(torch.randn(2, 8, 4, 4), torch.rand(2, 7), torch.randn(4, 8, 1, 1), None)
