import copy
import math

import pytest
import torch
from torch import nn

import effnet
from effnet.bench.measure import count_macs, count_params
from effnet.layers import Conv2dSame, DropPath
from helpers.model import assert_checkpointing_keeps_gradients, assert_recomputing_keeps_training, saved_bytes

PARAMS = {
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960, "efficientnet_b8": 87_413_142,
    "efficientnet_l2": 480_309_308, "efficientnet_lite0": 4_652_008, "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072, "efficientnet_lite3": 8_197_096, "efficientnet_lite4": 13_006_568,
}
GMACS = {
    "efficientnet_b0": 0.386, "efficientnet_b1": 0.687, "efficientnet_b2": 0.994, "efficientnet_b3": 1.827,
    "efficientnet_b4": 4.394, "efficientnet_b5": 10.266, "efficientnet_b6": 19.068, "efficientnet_b7": 37.746,
    "efficientnet_b8": 62.597, "efficientnet_lite0": 0.385, "efficientnet_lite1": 0.600,
    "efficientnet_lite2": 0.860, "efficientnet_lite3": 1.608, "efficientnet_lite4": 3.944,
}
# Reference table: stem, head and blocks per stage.
STRUCTURE = {
    "efficientnet_b0": (32, 1280, [1, 2, 2, 3, 3, 4, 1]),
    "efficientnet_b1": (32, 1280, [2, 3, 3, 4, 4, 5, 2]),
    "efficientnet_b2": (32, 1408, [2, 3, 3, 4, 4, 5, 2]),
    "efficientnet_b3": (40, 1536, [2, 3, 3, 5, 5, 6, 2]),
    "efficientnet_b4": (48, 1792, [2, 4, 4, 6, 6, 8, 2]),
    "efficientnet_b5": (48, 2048, [3, 5, 5, 7, 7, 9, 3]),
    "efficientnet_b6": (56, 2304, [3, 6, 6, 8, 8, 11, 3]),
    "efficientnet_b7": (64, 2560, [4, 7, 7, 10, 10, 13, 4]),
}


def meta_model(name: str, **kwargs) -> effnet.EfficientNet:
    with torch.device("meta"):
        return effnet.create_model(name, **kwargs)


def tiny(**kwargs) -> effnet.EfficientNet:
    return effnet.create_model("efficientnet_b0", width=0.25, depth=0.34, num_classes=7, **kwargs)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_is_exact(name):
    assert count_params(meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(GMACS))
def test_macs_match_reference_table_within_one_percent(name):
    model = meta_model(name)
    macs = count_macs(model, model.preprocessing.resolution) / 1e9
    assert macs == pytest.approx(GMACS[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(STRUCTURE))
def test_stem_head_and_depths_match_reference(name):
    stem, head, repeats = STRUCTURE[name]
    model = meta_model(name)
    assert model.stem.conv.out_channels == stem
    assert model.num_features == head
    assert [len(stage) for stage in model.stages] == repeats


def test_lite_variants_keep_stem_head_and_outer_stages_fixed():
    model = meta_model("efficientnet_lite4")
    assert model.stem.conv.out_channels == 32 and model.num_features == 1280
    assert len(model.stages[0]) == 1 and len(model.stages[-1]) == 1
    assert len(model.stages[1]) == math.ceil(2 * 1.8)
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert all(isinstance(block.se, nn.Identity) for stage in model.stages for block in stage)


def test_b0_uses_silu_everywhere_and_se_from_block_input():
    model = meta_model("efficientnet_b0")
    activations = {type(m) for m in model.modules() if isinstance(m, (nn.SiLU, nn.ReLU, nn.ReLU6, nn.Hardswish))}
    assert activations == {nn.SiLU}
    se = model.stages[1][0].se
    assert (se.reduce.in_channels, se.reduce.out_channels, se.expand.out_channels) == (96, 4, 96)
    assert model.config.bn_momentum == 0.01 and model.config.bn_eps == 1e-3
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_stochastic_depth_grows_linearly_with_block_index():
    model = meta_model("efficientnet_b0")
    blocks = [block for stage in model.stages for block in stage]
    for index, block in enumerate(blocks):
        expected = 0.2 * index / len(blocks)
        if block.has_residual:
            assert isinstance(block.drop_path, DropPath)
            assert block.drop_path.drop_prob == pytest.approx(expected)
        else:
            assert block.drop_path is None


def test_reference_initialisation():
    model = effnet.create_model("efficientnet_b0")
    conv = model.stages[3][0].expand.conv  # 1x1, 80 -> 480... fan_out = out channels
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / conv.out_channels), rel=0.05)
    dw = model.stages[5][0].dw.conv  # depthwise 5x5: fan_out = 25 * out / groups = 25
    assert dw.weight.std().item() == pytest.approx(math.sqrt(2 / 25), rel=0.05)
    bound = 1 / math.sqrt(1000)
    assert model.classifier.weight.abs().max() <= bound and model.classifier.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(model.classifier.bias) == 0


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_forward_backward_at_odd_sizes(padding):
    model = effnet.create_model("efficientnet_b0", num_classes=5, padding=padding)
    x = torch.randn(2, 3, 97, 131, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


def test_same_padding_uses_dynamic_convs_only_where_stride_two():
    model = effnet.create_model("efficientnet_b0", padding="same")
    dynamic = [m for m in model.modules() if isinstance(m, Conv2dSame)]
    assert len(dynamic) == 5  # stem and the four stride-2 depthwise convs
    assert all(m.stride == (2, 2) for m in dynamic)


def test_features_pyramid_strides_and_channels():
    model = effnet.create_model("efficientnet_b0").eval()
    assert [(f.stride, f.channels) for f in model.feature_info] == [(2, 16), (4, 24), (8, 40), (16, 112), (32, 320)]
    features = model.forward_multiscale(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in features] == [(16, 112, 112), (24, 56, 56), (40, 28, 28), (112, 14, 14),
                                                      (320, 7, 7)]
    b3 = meta_model("efficientnet_b3")
    assert [f.channels for f in b3.feature_info] == [24, 32, 48, 136, 384]


def test_forward_is_features_then_head():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 2, 2)
    torch.testing.assert_close(model.forward_head(features), model(x))
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)


def test_reset_classifier():
    model = tiny()
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, model.num_features)


def test_gradient_checkpointing_gives_the_same_gradients():
    assert_checkpointing_keeps_gradients(tiny(drop_path_rate=0.0, drop_rate=0.0), torch.randn(4, 3, 64, 64))


def recompute(model):
    model.set_memory_mode("recompute")


def test_recompute_mode_keeps_a_quarter_of_the_saved_bytes_and_the_same_training():
    model = effnet.create_model("efficientnet_b0", drop_path_rate=0.0, drop_rate=0.0, num_classes=10)
    ratio = assert_recomputing_keeps_training(model, torch.randn(4, 3, 64, 64), recompute)
    assert ratio <= 0.3  # measured 0.23: convolution outputs and region inputs only


@pytest.mark.cpu_kinds
def test_recompute_mode_in_channels_last_under_bf16_autocast():
    model = tiny(drop_path_rate=0.0, drop_rate=0.0).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ratio = assert_recomputing_keeps_training(model, x, recompute)
    assert ratio <= 0.4


def test_recompute_mode_keeps_stochastic_depth_masks():
    model = tiny(drop_path_rate=0.5, drop_rate=0.0).train()
    x = torch.randn(4, 3, 64, 64)
    grads = []
    for mode in ("save", "recompute"):
        model.set_memory_mode(mode)
        model.zero_grad()
        torch.manual_seed(3)
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for expected, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_unknown_memory_mode_is_refused():
    with pytest.raises(effnet.errors.ConfigError, match="unknown memory mode 'lean'.*save, recompute"):
        tiny().set_memory_mode("lean")


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True], ids=["recompute", "grad-checkpointing"])
def test_compiled_training_step_recomputes_with_the_same_gradients_and_statistics(full):
    model = tiny(drop_path_rate=0.0, drop_rate=0.0).train().double()
    eager = copy.deepcopy(model)
    stored = copy.deepcopy(model)
    model.set_grad_checkpointing(True) if full else model.set_memory_mode("recompute")
    x = torch.randn(2, 3, 64, 64, dtype=torch.double)
    saved = []
    for net in (stored, model):  # the bytes the compiled step keeps for backward, without and with
        compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
        loss = []
        saved.append(saved_bytes(lambda compiled=compiled, loss=loss: loss.append(compiled(x).sum())))
        loss[0].backward()
    # measured 0.51 (recompute) and 0.26 (region inputs only): the partitioner follows the policy
    assert saved[1] <= (0.3 if full else 0.6) * saved[0]
    eager(x).sum().backward()
    for expected, p in zip(eager.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, expected.grad)
    for expected, buffer in zip(eager.buffers(), model.buffers(), strict=True):
        torch.testing.assert_close(buffer, expected)


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True], ids=["recompute", "grad-checkpointing"])
def test_compiled_recomputing_under_the_eager_backend_says_which_backends_work(full):
    model = tiny(drop_path_rate=0.0, drop_rate=0.0).train()
    model.set_grad_checkpointing(True) if full else model.set_memory_mode("recompute")
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with pytest.raises(effnet.errors.ConfigError, match="backend='eager'.*'inductor' or 'aot_eager'"):
        compiled(torch.randn(2, 3, 32, 32))
    assert all(int(m.num_batches_tracked) == 0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_channels_last_matches_contiguous():
    model = effnet.create_model("efficientnet_b0").eval()
    x = torch.randn(2, 3, 128, 160)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4)


def test_in_chans_override():
    model = effnet.create_model("efficientnet_b0", in_chans=1, num_classes=10)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_torchscript_matches_eager(padding):
    model = effnet.create_model("efficientnet_b0", padding=padding).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 225, 231)
    torch.testing.assert_close(scripted(x), model(x))
    torch.testing.assert_close(scripted.forward_multiscale(x)[-1], model.forward_multiscale(x)[-1])


@pytest.mark.slow
def test_torch_export_matches_eager_with_dynamic_batch():
    model = effnet.create_model("efficientnet_b0", padding="same").eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 225, 231),), dynamic_shapes=({0: batch},))
    x = torch.randn(3, 3, 225, 231)
    torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.slow
def test_compile_fullgraph_has_no_graph_breaks_with_dynamic_sizes():
    # Dynamic sizes through 16 TF-'SAME' padded blocks: the padding arithmetic must keep the
    # symbolic shapes simple, else tracing takes many minutes.
    model = effnet.create_model("efficientnet_b0", padding="same").eval()
    compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=True)
    with torch.no_grad():
        for size in ((97, 131), (64, 90)):
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
def test_inductor_compiled_model_matches_eager():
    model = tiny(padding="same").eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 65, 77)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="unknown model 'efficientnet_b9'.*efficientnet_b0.*efficientnet_lite4"):
        effnet.create_model("efficientnet_b9")


def test_unknown_override_is_refused():
    with pytest.raises(TypeError, match="unknown option 'dropout_rate'.*drop_path_rate"):
        effnet.create_model("efficientnet_b0", dropout_rate=0.3)


@pytest.mark.parametrize("shape", [(3, 224, 224), (1, 1, 224, 224), (1, 4, 64, 64), (2, 3, 64)])
def test_bad_input_shape_names_the_expected_shape(shape):
    model = tiny().eval()
    with pytest.raises(ValueError, match=r"expects an input of shape \(N, 3, H, W\), got \[" ):
        model(torch.randn(*shape))


def test_phi_variants_follow_the_formula():
    assert effnet.get_entry("efficientnet_phi0").config == effnet.get_entry("efficientnet_b0").config
    entry = effnet.get_entry("efficientnet_phi2")
    assert (entry.config.width, entry.config.depth, entry.preprocessing.resolution) == pytest.approx((1.21, 1.44, 296))
    model = meta_model("efficientnet_phi2")
    assert model.preprocessing.resolution == 296
    custom = meta_model("efficientnet_b0", width=1.3, depth=1.5, resolution=270)
    assert custom.preprocessing.resolution == 270 and "resolution" not in vars(custom.config)
    assert custom.stem.conv.out_channels == 40


def test_a_model_built_from_a_config_has_a_description():
    model = effnet.EfficientNet(effnet.EfficientNetConfig(width=0.25, depth=0.25), num_classes=3)
    assert model.description == effnet.ModelDescription()
    assert (model.model_name, model.preprocessing.resolution, model.class_names, model.pretrained_source) == \
        ("efficientnet_custom", 224, None, None)
    model.describe(class_names=["a", "b", "c"])
    assert model.class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="2 class names for a model with 3 classes"):
        model.describe(class_names=["a", "b"])
    model.reset_classifier(2)
    assert model.class_names is None  # the names went with the old head


def test_zero_init_classifier_refuses_a_model_without_classifier():
    model = effnet.EfficientNet(effnet.EfficientNetConfig(width=0.25, depth=0.25), num_classes=0)
    with pytest.raises(ValueError, match="no classifier to zero.*reset_classifier"):
        model.zero_init_classifier()


def test_preprocessing_carried_by_model():
    assert meta_model("efficientnet_b3").preprocessing.crop_pct == 0.904
    lite = meta_model("efficientnet_lite0").preprocessing
    assert lite.mean == (0.5, 0.5, 0.5) and lite.std == (0.5, 0.5, 0.5)
    assert meta_model("efficientnet_b0").preprocessing.resize_size == 256


def test_config_validation():
    with pytest.raises(ValueError, match="invalid drop_path_rate=1.5"):
        effnet.create_model("efficientnet_b0", drop_path_rate=1.5)
    with pytest.raises(ValueError, match="unknown activation"):
        effnet.create_model("efficientnet_b0", activation="tanhh")


@pytest.mark.slow
def test_compiled_training_step_has_no_graph_breaks():
    # Double precision: eager CPU runs some convs another way (as linear, or with cropped
    # kernels), exact in arithmetic but rounded differently in float32.
    model = tiny(drop_path_rate=0.0, drop_rate=0.0).train().double()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 64, 64, dtype=torch.double)
    compiled(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for expected, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, expected)
