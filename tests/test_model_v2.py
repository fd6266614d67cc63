"""EfficientNetV2: exact sizes, the Fused-MBConv block, and every model feature V1 has."""

import pytest
import torch

import effnet
from effnet.bench.measure import count_macs, count_params
from effnet.layers import Conv2dSame, FusedMBConv, MBConv
from effnet.registry import default_train_size
from effnet.variants import variants
from helpers.model import assert_checkpointing_keeps_gradients, assert_recomputing_keeps_training

# google/automl efficientnetv2 (as timm and torchvision build them), 1000 classes.
PARAMS = {
    "efficientnet_v2_b0": 7_139_704, "efficientnet_v2_b1": 8_141_052, "efficientnet_v2_b2": 10_096_086,
    "efficientnet_v2_b3": 14_358_406, "efficientnet_v2_s": 21_458_488, "efficientnet_v2_m": 54_139_356,
    "efficientnet_v2_l": 118_515_272, "efficientnet_v2_xl": 208_119_808,
}
GMACS = {"efficientnet_v2_b0": (0.718, 224), "efficientnet_v2_b3": (3.011, 300), "efficientnet_v2_s": (8.366, 384),
         "efficientnet_v2_m": (24.582, 480)}


def meta_model(name: str, **kwargs) -> effnet.EfficientNet:
    with torch.device("meta"):
        return effnet.create_model(name, **kwargs)


def tiny(**kwargs) -> effnet.EfficientNet:
    """V2-B0 narrowed and shortened: every stage kind (single conv, fused, MBConv) with one block each."""
    return effnet.create_model("efficientnet_v2_b0", width=0.25, depth=0.2, num_classes=7, **kwargs)


def test_v2_names_are_listed():
    assert set(effnet.list_models("v2")) == set(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_is_exact(name):
    assert count_params(meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(GMACS))
def test_macs_match_reference_within_one_percent(name):
    gmacs, resolution = GMACS[name]
    model = meta_model(name)
    assert model.preprocessing.resolution == resolution
    assert count_macs(model, resolution) / 1e9 == pytest.approx(gmacs, rel=0.01)


def test_v2_s_structure_fused_stages_without_se():
    model = meta_model("efficientnet_v2_s")
    assert model.stem.conv.out_channels == 24 and model.num_features == 1280
    assert [len(stage) for stage in model.stages] == [2, 4, 4, 6, 9, 15]
    kinds = [type(stage[0]) for stage in model.stages]
    assert kinds == [FusedMBConv] * 3 + [MBConv] * 3
    single = model.stages[0][0]
    assert isinstance(single.project, torch.nn.Identity) and single.expand.conv.kernel_size == (3, 3)
    assert single.has_residual  # 24 -> 24 at stride 1
    fused = model.stages[1][0]
    assert (fused.expand.conv.in_channels, fused.expand.conv.out_channels, fused.expand.conv.stride) == (24, 96, (2, 2))
    assert fused.project.conv.kernel_size == (1, 1) and fused.project.conv.out_channels == 48
    assert not any(hasattr(block, "se") for stage in model.stages[:3] for block in stage)
    se = model.stages[3][0].se  # SE width from the block input: 64 * 0.25
    assert (se.reduce.in_channels, se.reduce.out_channels) == (256, 16)


def test_b_variants_round_widths_plainly():
    # round_limit 0: B2's 1.1 x 16 = 17.6 rounds to 16 (V1's rule would add 8), B3's stem 1.2 x 32 to 40.
    assert meta_model("efficientnet_v2_b2").stages[0][0].expand.conv.out_channels == 16
    b3 = meta_model("efficientnet_v2_b3")
    assert b3.stem.conv.out_channels == 40 and b3.num_features == 1536


def test_registry_sizes_and_preprocessing():
    assert default_train_size("efficientnet_v2_s") == 300 and default_train_size("efficientnet_b0") == 224
    s = effnet.get_entry("efficientnet_v2_s").preprocessing
    assert (s.resolution, s.crop_pct, s.interpolation) == (384, 1.0, "bilinear")
    xl = effnet.get_entry("efficientnet_v2_xl").preprocessing
    assert (xl.resolution, xl.mean) == (512, (0.5, 0.5, 0.5))
    assert {v.name: v.train_resolution for v in variants("v2")} == {
        "efficientnet_v2_b0": 192, "efficientnet_v2_b1": 192, "efficientnet_v2_b2": 208, "efficientnet_v2_b3": 240,
        "efficientnet_v2_s": 300, "efficientnet_v2_m": 384, "efficientnet_v2_l": 384, "efficientnet_v2_xl": 384}


def test_feature_pyramid():
    model = tiny().eval()
    assert [f.stride for f in model.feature_info] == [2, 4, 8, 16, 32]
    features = model.forward_multiscale(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [
        (info.channels, 64 // info.stride, 96 // info.stride) for info in model.feature_info]


def test_forward_is_features_then_head_and_reset_classifier():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(features), model(x))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_forward_backward_at_odd_sizes(padding):
    model = tiny(padding=padding)
    x = torch.randn(2, 3, 67, 81, requires_grad=True)
    model(x).sum().backward()
    assert torch.isfinite(x.grad).all() and all(p.grad is not None for p in model.parameters())


def test_same_padding_is_dynamic_in_the_fused_stride_two_convs():
    model = tiny(padding="same")
    dynamic = [m for m in model.modules() if isinstance(m, Conv2dSame)]
    assert len(dynamic) == 5 and all(m.stride == (2, 2) for m in dynamic)  # stem, two fused, two depthwise
    assert isinstance(model.stages[1][0].expand.conv, Conv2dSame)


def test_recompute_mode_keeps_the_same_training_with_fewer_saved_bytes():
    model = tiny(drop_path_rate=0.0, drop_rate=0.0)
    ratio = assert_recomputing_keeps_training(model, torch.randn(2, 3, 64, 64),
                                              lambda net: net.set_memory_mode("recompute"))
    assert ratio <= 0.5


def test_gradient_checkpointing_and_zero_init_residual():
    assert_checkpointing_keeps_gradients(tiny(drop_path_rate=0.0, drop_rate=0.0), torch.randn(2, 3, 64, 64))
    block = FusedMBConv(8, 8, 3, 1, 4).eval()
    block.zero_init_last()
    x = torch.randn(1, 8, 9, 9)
    torch.testing.assert_close(block(x), x)


@pytest.mark.slow
def test_channels_last_torchscript_export_and_compile_match_eager():
    model = tiny(padding="same").eval()
    x = torch.randn(2, 3, 67, 81)
    expected = model(x)
    torch.testing.assert_close(torch.jit.script(model)(x), expected)
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.testing.assert_close(program.module()(x[:1]), expected[:1])
    compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), expected)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4)
