"""The Triton kernels (effnet.kernels: the fused depthwise conv, the SE gate folded into the
projection) against eager PyTorch, run on the CPU by Triton's interpreter (conftest's
``interpreter``).

``TRITON_INTERPRET=1`` is read when a kernel is wrapped, and :mod:`effnet.kernels` wraps on
first use in the mode the environment gives then: setting it per test is enough.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from effnet.errors import ConfigError
from effnet.kernels import (
    conv_padding,
    dwconv_act_squeeze,
    dwconv_act_squeeze_reference,
    gate_in_weights,
    gated_pointwise,
    gated_pointwise_reference,
    kernels_run_on,
)
from effnet.layers import create_conv2d, make_activation

pytest.importorskip("triton")


def _inputs(channels: int, height: int, width: int, kernel_size: int, dtype: torch.dtype,
            channels_last: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(2, channels, height, width).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(channels, 1, kernel_size, kernel_size) / kernel_size).to(dtype)
    return x, weight, torch.randn(channels).to(dtype)


def _layer_output(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, same: bool,
                  activation: str) -> torch.Tensor:
    """What the model's own depthwise layer (and activation) computes, in fp32."""
    channels, kernel_size = weight.shape[0], weight.shape[-1]
    conv = create_conv2d(channels, channels, kernel_size, stride, groups=channels, bias=True,
                         padding="same" if same else "symmetric")
    with torch.no_grad():
        conv.weight.copy_(weight.float())
        conv.bias.copy_(bias.float())
        return make_activation(activation)(conv(x.float()))


CASES = [  # kernel size, stride, TF 'SAME', height, width
    (3, 1, False, 9, 7),
    (3, 2, False, 9, 8),
    (5, 1, False, 6, 11),
    (5, 2, False, 13, 5),
    (3, 2, True, 8, 10),  # SAME, asymmetric: nothing before, one after
    (5, 2, True, 12, 7),  # SAME, asymmetric in height, symmetric in width
    (5, 1, True, 5, 5),
]


@pytest.mark.parametrize(("kernel_size", "stride", "same", "height", "width"), CASES)
@pytest.mark.parametrize("activation", ["silu", "relu6"])
def test_dwconv_kernel_matches_the_layer_fp32(interpreter: None, kernel_size: int, stride: int, same: bool,
                                              height: int, width: int, activation: str) -> None:
    x, weight, bias = _inputs(20, height, width, kernel_size, torch.float32)
    padding = conv_padding(height, width, kernel_size, stride, same)
    y, sums = dwconv_act_squeeze(x, weight, bias, stride, padding, activation)
    expected = _layer_output(x, weight, bias, stride, same, activation)
    assert y.shape == expected.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums, expected.sum((2, 3)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("kernel_size", "stride", "same", "height", "width"), CASES[1::2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dwconv_kernel_matches_the_layer_half(interpreter: None, kernel_size: int, stride: int, same: bool,
                                              height: int, width: int, dtype: torch.dtype) -> None:
    x, weight, bias = _inputs(24, height, width, kernel_size, dtype)
    padding = conv_padding(height, width, kernel_size, stride, same)
    y, sums = dwconv_act_squeeze(x, weight, bias, stride, padding, "silu")
    assert y.dtype == dtype
    # fp32 accumulation, one rounding at the end: within half an ulp of the exact result
    torch.testing.assert_close(y.float(), _layer_output(x, weight, bias, stride, same, "silu"),
                               rtol=1e-2 if dtype == torch.bfloat16 else 1e-3, atol=1e-2)
    # the squeeze sums what was stored, in fp32: the SE module's mean times H * W
    torch.testing.assert_close(sums / (y.shape[2] * y.shape[3]), y.float().mean((2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kernel_size", "stride", "same", "height", "width"), [CASES[0], CASES[4], CASES[5]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dwconv_kernel_applies_the_previous_convs_bias_and_activation(
        interpreter: None, kernel_size: int, stride: int, same: bool, height: int, width: int,
        dtype: torch.dtype) -> None:
    """The expansion's epilogue on read: the padding stays zero, not silu(bias)."""
    x, weight, bias = _inputs(16, height, width, kernel_size, dtype)
    input_bias = (torch.randn(16) + 1.0).to(dtype)
    padding = conv_padding(height, width, kernel_size, stride, same)
    y, sums = dwconv_act_squeeze(x, weight, bias, stride, padding, "silu", input_bias=input_bias,
                                 input_activation="silu")
    hidden = torch.nn.functional.silu(x.float() + input_bias.float().view(1, -1, 1, 1))
    expected = _layer_output(hidden, weight, bias, stride, same, "silu")
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(y.float(), expected, **tolerance)
    torch.testing.assert_close(sums, y.float().sum((2, 3)), rtol=1e-5, atol=1e-4)


def test_dwconv_kernel_reads_nchw_and_skips_the_squeeze(interpreter: None) -> None:
    x, weight, bias = _inputs(10, 7, 6, 3, torch.float32, channels_last=False)
    padding = conv_padding(7, 6, 3, 2, True)
    y, sums = dwconv_act_squeeze(x, weight, bias, 2, padding, "relu", squeeze=False)
    assert sums is None
    torch.testing.assert_close(y, _layer_output(x, weight, bias, 2, True, "relu"), rtol=1e-5, atol=1e-5)


def test_dwconv_kernel_reads_strided_weights_and_biases(interpreter: None) -> None:
    """Taps and biases that are views (a transposed kernel, every other element) read as their values."""
    x, weight, bias = _inputs(12, 7, 9, 3, torch.float32)
    weight = weight.transpose(2, 3)
    wide_bias, input_bias = torch.randn(24), torch.randn(24)[::2]
    assert not (weight.is_contiguous() or wide_bias[::2].is_contiguous() or input_bias.is_contiguous())
    padding = conv_padding(7, 9, 3, 1, False)
    y, sums = dwconv_act_squeeze(x, weight, wide_bias[::2], 1, padding, "silu", input_bias=input_bias,
                                 input_activation="relu")
    hidden = torch.relu(x + input_bias.view(1, -1, 1, 1))
    expected = _layer_output(hidden, weight, wide_bias[::2], 1, False, "silu")
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums, expected.sum((2, 3)), rtol=1e-5, atol=1e-4)


def test_dwconv_tiles_cover_many_blocks(interpreter: None) -> None:
    """More positions and channels than one tile: every tile stored, every partial sum added."""
    x, weight, bias = _inputs(40, 11, 13, 3, torch.float32)
    padding = conv_padding(11, 13, 3, 1, False)
    y, sums = dwconv_act_squeeze(x, weight, bias, 1, padding, "silu", block_p=16, block_c=16)
    expected = _layer_output(x, weight, bias, 1, False, "silu")
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums, expected.sum((2, 3)), rtol=1e-5, atol=1e-4)


def test_dwconv_falls_back_to_eager_without_triton_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, weight, bias = _inputs(8, 5, 5, 3, torch.float32)
    assert not kernels_run_on(x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels_run_on(x)
    monkeypatch.delenv("TRITON_INTERPRET")
    padding = conv_padding(5, 5, 3, 1, False)
    y, sums = dwconv_act_squeeze(x, weight, bias, 1, padding, "silu")
    expected, expected_sums = dwconv_act_squeeze_reference(x, weight, bias, 1, padding, "silu")
    torch.testing.assert_close(y, _layer_output(x, weight, bias, 1, False, "silu"))
    torch.testing.assert_close(sums, expected_sums)


@pytest.mark.parametrize("squeeze", [True, False])
def test_dwconv_custom_op_is_consistent_with_its_fake(squeeze: bool) -> None:
    """torch.compile and torch.export see the op through its schema and fake: both must match
    what it computes (shapes, dtypes, strides, no aliasing), dynamic shapes included."""
    x, weight, bias = _inputs(16, 9, 8, 5, torch.float32)
    args = (x, weight, bias, 2, list(conv_padding(9, 8, 5, 2, True)), "silu", squeeze, torch.randn(16), "relu6",
            64, 64, 8)
    torch.library.opcheck(torch.ops.effnet.dwconv_act_squeeze.default, args)


def test_dwconv_refuses_what_it_cannot_compute() -> None:
    x, weight, bias = _inputs(8, 5, 5, 3, torch.float32)
    with pytest.raises(ConfigError, match="hardswish"):
        dwconv_act_squeeze(x, weight, bias, 1, (1, 1, 1, 1), "hardswish")
    with pytest.raises(ConfigError, match="do not fit"):
        dwconv_act_squeeze(x, weight[:4], bias, 1, (1, 1, 1, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("kernel_size", "stride", "same"), [(3, 1, False), (5, 2, True), (3, 2, True)])
def test_dwconv_kernel_on_cuda_matches_the_layer(kernel_size: int, stride: int, same: bool) -> None:
    """The compiled kernel (not the interpreter) at a B0-like early-stage shape, in bf16."""
    x, weight, bias = (t.cuda() for t in _inputs(96, 56, 56, kernel_size, torch.bfloat16))
    input_bias = torch.randn(96, device="cuda", dtype=torch.bfloat16)
    padding = conv_padding(56, 56, kernel_size, stride, same)
    y, sums = dwconv_act_squeeze(x, weight, bias, stride, padding, "silu", input_bias=input_bias,
                                 input_activation="silu")
    hidden = torch.nn.functional.silu(x.float() + input_bias.float().view(1, -1, 1, 1))
    expected = _layer_output(hidden.cpu(), weight.cpu(), bias.cpu(), stride, same, "silu").cuda()
    torch.testing.assert_close(y.float(), expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(sums, y.float().sum((2, 3)), rtol=1e-4, atol=1e-2)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_dwconv_kernel_runs_on_the_tensors_device() -> None:
    """Tensors on the second GPU while the first is current: the launch goes to the tensors' device."""
    x, weight, bias = (t.to("cuda:1") for t in _inputs(32, 20, 20, 3, torch.float32))
    padding = conv_padding(20, 20, 3, 1, False)
    with torch.cuda.device(0):
        y, sums = dwconv_act_squeeze(x, weight, bias, 1, padding, "silu")
    expected = _layer_output(x.cpu(), weight.cpu(), bias.cpu(), 1, False, "silu")
    torch.testing.assert_close(y.cpu(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sums.cpu(), expected.sum((2, 3)), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("kernel_size", "stride", "input_bias"), [(3, 1, True), (5, 2, False)])
def test_dwconv_kernel_compiles_for_hopper_without_spills(kernel_size: int, stride: int, input_bias: bool,
                                                           tmp_path) -> None:
    """The compiled path, checked without a GPU: Triton's front end and ptxas build the kernel for
    sm_90 (H100/H200) with 16-byte loads, the squeeze's relaxed atomic add and no register spills."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from effnet.kernels._dwconv_triton import dwconv_act_squeeze_kernel

    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    if not os.path.exists(os.path.join(tools, "ptxas")):
        pytest.skip("Triton's NVIDIA backend (ptxas) is not installed")
    kernel = triton.jit(dwconv_act_squeeze_kernel)
    constants = {"STRIDE": stride, "PAD_TOP": kernel_size // 2, "PAD_LEFT": kernel_size // 2, "K": kernel_size,
                 "IN_BIAS": input_bias, "IN_ACT": 1, "ACT": 1, "SQUEEZE": True, "BLOCK_P": 64, "BLOCK_C": 64,
                 "sxc": 1, "syc": 1}  # channels_last: unit channel strides, as a launch specializes them
    signature = {name: "constexpr" if name in constants else "*fp32" if name == "sums_ptr"
                 else "*bf16" if name.endswith("_ptr") else "i32" for name in kernel.arg_names}
    aligned = [name for name in kernel.arg_names if name.endswith("_ptr") or name in ("C", "sxn", "sxh", "sxw",
                                                                                      "syn", "syh", "syw")]
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    compiled = triton.compile(ASTSource(kernel, signature, constants, attrs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 8})
    ptx = compiled.asm["ptx"]
    assert "ld.global.v4" in ptx and ("red.global" in ptx or "atom.global" in ptx)
    assert "acq_rel" not in ptx  # a relaxed add: no fence nor L1 invalidation per program
    cubin = tmp_path / "kernel.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    usage = subprocess.run([os.path.join(tools, "cuobjdump"), "--dump-resource-usage", str(cubin)],
                           capture_output=True, text=True, check=True).stdout
    assert "STACK:0" in usage and "LOCAL:0" in usage, usage

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
