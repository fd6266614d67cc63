"""EfficientNetV2 checkpoints of torchvision and timm convert to logits within 1e-4 of the peer.

Peers hold random weights (BatchNorm statistics and biases randomized too); they are compared
in fp32 eval mode at the native eval size and at 229 x 263, where TF 'SAME' padding differs
from symmetric padding. The large networks are marked slow.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import effnet
from effnet.registry import Preprocessing
from effnet.weights import default_source, get_source, list_sources
from effnet.weights.convert import LAYOUTS
from helpers.weights import max_diff, odd_photo, photo, randomize_

TOLERANCE = 1e-4
ODD = (229, 263)
SLOW = pytest.mark.slow
FAST_SIZES = ("b0", "b1", "b2", "b3", "s")


def sizes(names: tuple[str, ...]) -> list:
    return [pytest.param(n, marks=() if n in FAST_SIZES else SLOW) for n in names]


@pytest.fixture(scope="module")
def odd_cat() -> torch.Tensor:
    return odd_photo(ODD)


def assert_matches(ours: torch.nn.Module, peer: torch.nn.Module, odd_cat: torch.Tensor) -> None:
    native = photo(preprocessing=Preprocessing(ours.preprocessing.resolution))
    for x in (native, odd_cat):
        assert max_diff(ours, peer, x) <= TOLERANCE


@pytest.mark.parametrize("size", sizes(("s", "m", "l")))
def test_torchvision_v2_matches(size: str, odd_cat: torch.Tensor) -> None:
    peer = randomize_(getattr(torchvision.models, f"efficientnet_v2_{size}")(weights=None))
    ours = effnet.create_model(f"efficientnet_v2_{size}", pretrained=peer.state_dict()).eval()
    assert (ours.config.padding, ours.config.bn_eps) == ("symmetric", 1e-3)
    assert_matches(ours, peer, odd_cat)


@pytest.mark.parametrize("size", sizes(("b0", "b1", "b2", "b3", "s", "m", "l", "xl")))
def test_timm_tf_efficientnetv2_matches_at_odd_sizes(size: str, odd_cat: torch.Tensor) -> None:
    peer = randomize_(timm.create_model(f"tf_efficientnetv2_{size}", pretrained=False))
    ours = effnet.create_model(f"efficientnet_v2_{size}", pretrained=peer.state_dict(), pretrained_layout="timm_tf")
    assert (ours.config.padding, ours.config.bn_eps) == ("same", 1e-3)
    assert_matches(ours.eval(), peer, odd_cat)


def test_tf_weights_need_tf_padding(odd_cat: torch.Tensor) -> None:
    peer = randomize_(timm.create_model("tf_efficientnetv2_b0", pretrained=False))
    ours = effnet.create_model("efficientnet_v2_b0", pretrained=peer.state_dict(), pretrained_layout="timm_tf",
                               padding="symmetric")
    assert max_diff(ours, peer, odd_cat) > 100 * TOLERANCE


def test_v1_checkpoint_is_refused_for_a_v2_model() -> None:
    peer = torchvision.models.efficientnet_b0(weights=None)
    with pytest.raises(effnet.weights.CheckpointError, match="another architecture"):
        effnet.create_model("efficientnet_v2_b0", pretrained=peer.state_dict())


def test_every_v2_model_has_a_default_source_with_the_registry_preprocessing() -> None:
    for name in effnet.list_models("v2"):
        source = default_source(name)
        assert source.layout in LAYOUTS and source.url.startswith("https://")
        assert source.preprocessing == effnet.get_entry(name).preprocessing
    tags = {s.tag for s in list_sources("efficientnet_v2_s")}
    assert tags == {"torchvision", "in1k", "in21k", "in21k_ft_in1k"}
    assert get_source("efficientnet_v2_xl", "in21k").num_classes == 21843


@pytest.mark.parametrize("size", ["s", "m", "l"])
def test_torchvision_v2_sources_match_torchvision_metadata(size: str) -> None:
    weights = getattr(torchvision.models, f"EfficientNet_V2_{size.upper()}_Weights").IMAGENET1K_V1
    source = get_source(f"efficientnet_v2_{size}", "torchvision")
    assert source.url == weights.url and source.sha256 in weights.url
    assert source.top1 == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    transforms = weights.transforms()
    preprocessing = source.preprocessing
    assert (preprocessing.resolution, preprocessing.resize_size) == (transforms.crop_size[0], transforms.resize_size[0])
    assert preprocessing.interpolation == transforms.interpolation.value
    assert preprocessing.mean == pytest.approx(transforms.mean)
