import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effnet.layers import (
    Conv2d,
    Conv2dSame,
    DropPath,
    LayerOptions,
    MBConv,
    SqueezeExcite,
    create_conv2d,
    reachable_taps,
    same_padding_amounts,
)


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [(224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (112, 5, 2, (1, 2)), (113, 5, 2, (2, 2)),
     (14, 5, 2, (1, 2)), (7, 3, 1, (1, 1)), (7, 5, 1, (2, 2)), (1, 3, 2, (1, 1)), (8, 1, 1, (0, 0))],
)
def test_same_padding_amounts_follow_tensorflow(size, kernel, stride, expected):
    # TF: out = ceil(size / stride); total = max((out - 1) * stride + kernel - size, 0); extra goes after.
    assert same_padding_amounts(size, kernel, stride) == expected


@pytest.mark.parametrize("height, width", [(224, 224), (231, 257), (17, 18), (5, 3)])
@pytest.mark.parametrize("kernel", [3, 5])
def test_conv2d_same_equals_explicitly_padded_conv(height, width, kernel):
    conv = Conv2dSame(4, 6, kernel, stride=2)
    x = torch.randn(2, 4, height, width)
    top, bottom = same_padding_amounts(height, kernel, 2)
    left, right = same_padding_amounts(width, kernel, 2)
    expected = F.conv2d(F.pad(x, [left, right, top, bottom]), conv.weight, None, 2)
    out = conv(x)
    assert out.shape[-2:] == (-(-height // 2), -(-width // 2))
    torch.testing.assert_close(out, expected)


def test_conv2d_same_matches_timm_peer():
    from timm.layers import create_conv2d as timm_conv

    ours = create_conv2d(8, 8, 5, stride=2, groups=8, padding="same")
    peer = timm_conv(8, 8, 5, stride=2, groups=8, padding="same")
    peer.load_state_dict(ours.state_dict())
    for size in [(32, 32), (33, 47), (9, 10)]:
        x = torch.randn(1, 8, *size)
        torch.testing.assert_close(ours(x), peer(x))


def test_symmetric_padding_is_static_and_same_only_where_needed():
    assert isinstance(create_conv2d(3, 8, 3, 2), nn.Conv2d) and not isinstance(create_conv2d(3, 8, 3, 2), Conv2dSame)
    assert create_conv2d(3, 8, 3, 2).padding == (1, 1)
    assert isinstance(create_conv2d(3, 8, 3, 2, padding="same"), Conv2dSame)
    stride1 = create_conv2d(3, 8, 5, 1, padding="same")  # stride 1, odd kernel: SAME is symmetric
    assert not isinstance(stride1, Conv2dSame) and stride1.padding == (2, 2)
    with pytest.raises(ValueError, match="unknown padding 'valid'"):
        create_conv2d(3, 8, 3, padding="valid")


def test_drop_path_is_identity_in_eval():
    layer = DropPath(0.5).eval()
    x = torch.randn(16, 4, 3, 3)
    assert torch.equal(layer(x), x)


def test_drop_path_drops_whole_samples_in_training():
    layer = DropPath(0.5).train()
    out = layer(torch.ones(512, 3, 4, 4))
    per_sample = out.flatten(1)
    dropped = (per_sample == 0).all(1)
    kept = (per_sample == 2.0).all(1)  # kept samples scaled by 1 / (1 - 0.5)
    assert torch.all(dropped | kept)
    assert 0.35 < dropped.float().mean() < 0.65


def test_drop_path_with_shortcut_is_the_fused_residual_add():
    layer = DropPath(0.5).train()
    x = torch.randn(64, 3, 4, 4, requires_grad=True)
    shortcut = torch.randn(64, 3, 4, 4, requires_grad=True)
    torch.manual_seed(0)
    fused = layer(x, shortcut)
    torch.manual_seed(0)
    separate = layer(x) + shortcut
    torch.testing.assert_close(fused, separate)
    assert not torch.equal(fused, x + shortcut)  # some samples were dropped
    grads = torch.autograd.grad(fused.square().sum(), (x, shortcut))
    expected = torch.autograd.grad(separate.square().sum(), (x, shortcut))
    torch.testing.assert_close(grads, expected)
    assert torch.equal(layer.eval()(x, shortcut), x + shortcut)
    assert torch.equal(DropPath(0.0).train()(x, shortcut), x + shortcut)


def test_drop_path_rejects_bad_probability():
    with pytest.raises(ValueError, match="drop_prob must be in"):
        DropPath(1.0)


def test_squeeze_excite_gates_channels():
    se = SqueezeExcite(96, 4)
    assert (se.reduce.in_channels, se.reduce.out_channels, se.expand.out_channels) == (96, 4, 96)
    assert se.reduce.bias is not None and se.expand.bias is not None
    assert isinstance(se.act, nn.SiLU)
    x = torch.randn(2, 96, 5, 5)
    gate = torch.sigmoid(se.expand(F.silu(se.reduce(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(se(x), x * gate)


def test_mbconv_structure():
    block = MBConv(16, 24, 3, 2, expand_ratio=6, se_ratio=0.25, drop_path_rate=0.1)
    assert block.expand.conv.out_channels == 96
    assert block.se.reduce.out_channels == 4  # from the block input (16 * 0.25), not 96 * 0.25
    assert not block.has_residual and block.drop_path is None
    first = MBConv(32, 16, 3, 1, expand_ratio=1, se_ratio=0.25)
    assert isinstance(first.expand, nn.Identity)
    assert first.se.reduce.out_channels == 8
    residual = MBConv(24, 24, 5, 1, expand_ratio=6, se_ratio=0.25, drop_path_rate=0.1)
    assert residual.has_residual and isinstance(residual.drop_path, DropPath)
    assert all(m.bias is None for m in residual.modules() if isinstance(m, nn.Conv2d) and m not in
               (residual.se.reduce, residual.se.expand))


def test_mbconv_residual_adds_input_in_eval():
    block = MBConv(8, 8, 3, 1, expand_ratio=4, se_ratio=0.25, drop_path_rate=0.5).eval()
    x = torch.randn(2, 8, 6, 6)
    branch = block.project(block.se(block.dw(block.expand(x))))
    torch.testing.assert_close(block(x), branch + x)


def test_layer_options_refuse_unknown_values():
    with pytest.raises(ValueError, match="unknown activation 'mish'"):
        LayerOptions(activation="mish")
    with pytest.raises(ValueError, match="unknown padding"):
        LayerOptions(padding="reflect")
    options = LayerOptions(bn_momentum=0.1, bn_eps=1e-5)
    bn = options.norm(8)
    assert (bn.momentum, bn.eps) == (0.1, 1e-5)


@pytest.mark.parametrize("padding", ["symmetric", "same"])
@pytest.mark.parametrize("kernel, stride, size", [(5, 1, (13, 17)), (5, 2, (24, 24)), (5, 2, (23, 25)), (7, 2, (15, 9)),
                                                  (5, 1, (1, 1)), (5, 2, (2, 1)), (5, 1, (2, 3)), (3, 1, (2, 2)),
                                                  (3, 1, (1, 2))])
def test_depthwise_fast_backward_equals_reference_gradients(padding, kernel, stride, size):
    conv = create_conv2d(6, 6, kernel, stride, groups=6, padding=padding).double()
    x = torch.randn(3, 6, *size, dtype=torch.double, requires_grad=True)
    assert conv._fast_depthwise_backward_applies(x if kernel == 3 else torch.empty(1, 6, 8, 8, dtype=torch.double))
    out = conv(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    weight = conv.weight.detach().requires_grad_()
    reference_input = x.detach().requires_grad_()
    padded = reference_input
    if isinstance(conv, Conv2dSame):
        (top, bottom), (left, right) = (same_padding_amounts(s, kernel, stride) for s in size)
        padded = F.pad(reference_input, [left, right, top, bottom])
    reference = F.conv2d(padded, weight, None, stride, conv.padding, 1, 6)
    reference.backward(grad)
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(conv.weight.grad, weight.grad)
    torch.testing.assert_close(x.grad, reference_input.grad)


@pytest.mark.parametrize("kernel, stride, size", [(3, 1, (2, 2)), (5, 1, (4, 4)), (5, 2, (3, 3)), (5, 1, (3, 4))])
def test_depthwise_fast_backward_in_channels_last_equals_reference_gradients(kernel, stride, size):
    conv = create_conv2d(6, 6, kernel, stride, groups=6).double()
    x = torch.randn(3, 6, *size, dtype=torch.double).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert conv._fast_depthwise_backward_applies(x)
    out = conv(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    weight = conv.weight.detach().requires_grad_()
    reference_input = x.detach().requires_grad_()
    reference = F.conv2d(reference_input, weight, None, stride, conv.padding, 1, 6)
    reference.backward(grad)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(conv.weight.grad, weight.grad)
    torch.testing.assert_close(x.grad, reference_input.grad)


def test_depthwise_fast_backward_only_where_it_pays():
    x = torch.empty(1, 8, 8, 8)
    assert not create_conv2d(8, 8, 3, groups=8)._fast_depthwise_backward_applies(x)  # 3x3: no gain measured
    assert create_conv2d(8, 8, 3, groups=8)._fast_depthwise_backward_applies(x[..., :2, :2].contiguous())  # 2x2: 10x
    assert not create_conv2d(8, 16, 5)._fast_depthwise_backward_applies(x)  # not depthwise
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert not create_conv2d(8, 8, 5, groups=8)._fast_depthwise_backward_applies(channels_last)  # 8x8: no gain
    small_channels_last = x[..., :4, :4].contiguous(memory_format=torch.channels_last)
    assert create_conv2d(8, 8, 5, groups=8)._fast_depthwise_backward_applies(small_channels_last)  # 4x4, 5x5: 1.3x
    assert not create_conv2d(8, 8, 3, groups=8)._fast_depthwise_backward_applies(small_channels_last)  # 4x4, 3x3
    assert create_conv2d(8, 8, 3, groups=8)._fast_depthwise_backward_applies(
        x[..., :2, :2].contiguous(memory_format=torch.channels_last))  # 2x2: 1.5x
    assert create_conv2d(8, 8, 5, groups=8)._fast_depthwise_backward_applies(x)
    with torch.no_grad():
        assert not create_conv2d(8, 8, 5, groups=8)._fast_depthwise_backward_applies(x)


def test_depthwise_fast_backward_stays_out_of_traced_and_exported_graphs():
    model = nn.Sequential(create_conv2d(4, 4, 5, 2, groups=4), nn.ReLU())
    x = torch.randn(2, 4, 16, 16)
    traced = torch.jit.trace(model, x)
    assert "PythonOp" not in str(traced.graph)
    torch.testing.assert_close(traced(x), model(x))
    program = torch.export.export(model.train(), (x,))
    assert "DepthwiseConv2dFunction" not in str(program.graph)
    assert any(node.target == torch.ops.aten.conv2d.default for node in program.graph.nodes)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel, stride", [(3, 1), (5, 1), (5, 2), (7, 2), (3, 2)])
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (1, 3), (3, 2), (2, 5)])
def test_depthwise_on_maps_smaller_than_the_kernel_equals_the_full_kernel(kernel, stride, size, channels_last):
    conv = create_conv2d(4, 4, kernel, stride, groups=4).double()
    x = torch.randn(2, 4, *size, dtype=torch.double)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out = conv(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    weight, reference_input = conv.weight.detach().requires_grad_(), x.detach().requires_grad_()
    reference = F.conv2d(reference_input, weight, None, stride, kernel // 2, 1, 4)
    reference.backward(grad)
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(conv.weight.grad, weight.grad)
    torch.testing.assert_close(x.grad, reference_input.grad)


def test_depthwise_on_small_maps_runs_only_the_taps_that_meet_the_input(monkeypatch):
    assert reachable_taps(1, 5, 1, 2) == (2, 3)
    assert reachable_taps(2, 5, 1, 2) == (1, 4)
    assert reachable_taps(2, 5, 2, 2) == (2, 4)
    assert reachable_taps(7, 5, 2, 2) == (0, 5)
    kernels = []
    plain_conv2d = F.conv2d

    def recording_conv2d(x, weight, *args):
        kernels.append(tuple(weight.shape[-2:]))
        return plain_conv2d(x, weight, *args)

    monkeypatch.setattr(F, "conv2d", recording_conv2d)
    conv = create_conv2d(8, 8, 5, groups=8).eval()
    with torch.no_grad():
        conv(torch.randn(2, 8, 2, 2))
        conv(torch.randn(2, 8, 1, 1))  # one tap left: a per-channel product, no conv at all
        conv(torch.randn(2, 8, 6, 6))
    assert kernels == [(3, 3), (5, 5)]


@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_on_a_1x1_map_runs_as_linear_with_the_same_results(monkeypatch, channels_last):
    conv = Conv2d(12, 5, 1, bias=True).double()
    x = torch.randn(3, 12, 1, 1, dtype=torch.double)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight, bias, reference_input = (t.detach().requires_grad_() for t in (conv.weight, conv.bias, x))
    reference = F.conv2d(reference_input, weight, bias)
    grad = torch.randn_like(reference)
    reference.backward(grad)

    def refuse(*args):
        raise AssertionError("F.conv2d called for a pointwise conv on a 1x1 map")

    monkeypatch.setattr(F, "conv2d", refuse)
    out = conv(x)
    out.backward(grad)
    assert out.shape == (3, 5, 1, 1)
    torch.testing.assert_close(out, reference)
    for ours, theirs in ((conv.weight, weight), (conv.bias, bias), (x, reference_input)):
        torch.testing.assert_close(ours.grad, theirs.grad)
    assert isinstance(SqueezeExcite(12, 3).reduce, Conv2d)
