"""Every checkpoint family converts to logits within 1e-4 of the peer that holds the same weights.

Peers are built with random weights (every BatchNorm statistic and bias randomized too, so a
swapped tensor cannot hide), converted through ``create_model(name, pretrained=...)``, and
compared in fp32 eval mode on the scikit-image cat photo (224 x 224; 160 x 160 from B3 and
Lite3 up, to keep the suite fast); TensorFlow-trained families also at an odd size, where TF
'SAME' padding differs from symmetric padding (231 x 257; 115 x 129 from B3 and Lite3 up).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import effnet
from effnet.registry import Preprocessing
from effnet.weights import CheckpointError
from effnet.weights.convert import LAYOUTS, convert_state_dict, detect_layout
from helpers.weights import max_diff, odd_photo, photo, randomize_

TOLERANCE = 1e-4
FIXTURES = Path(__file__).parents[1] / "fixtures"
SLOW = pytest.mark.slow


def variants(indices: range, slow_from: int) -> list:
    return [pytest.param(i, marks=SLOW if i >= slow_from else ()) for i in indices]


LARGE_FROM = 3


@pytest.fixture(scope="module")
def cat() -> torch.Tensor:
    return photo()


@pytest.fixture(scope="module")
def odd_cat() -> torch.Tensor:
    return odd_photo()


@pytest.fixture(scope="module")
def photos(cat: torch.Tensor, odd_cat: torch.Tensor) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
    """(square, odd-sized) cat photos, by whether the variant is large."""
    return {False: (cat, odd_cat), True: (photo(preprocessing=Preprocessing(160)), odd_photo((115, 129)))}


@pytest.mark.parametrize("index", variants(range(8), slow_from=6))
def test_torchvision_b0_b7_match(index: int, photos: dict) -> None:
    peer = randomize_(getattr(torchvision.models, f"efficientnet_b{index}")(weights=None))
    ours = effnet.create_model(f"efficientnet_b{index}", pretrained=peer.state_dict()).eval()
    assert (ours.config.padding, ours.config.bn_eps) == ("symmetric", 1e-3 if index >= 5 else 1e-5)
    assert max_diff(ours, peer, photos[index >= LARGE_FROM][0]) <= TOLERANCE


@pytest.mark.parametrize("index", variants(range(8), slow_from=5))
def test_timm_efficientnet_b0_b7_match(index: int, photos: dict) -> None:
    peer = randomize_(timm.create_model(f"efficientnet_b{index}", pretrained=False))
    ours = effnet.create_model(f"efficientnet_b{index}", pretrained=peer.state_dict(), pretrained_layout="timm")
    assert (ours.config.padding, ours.config.bn_eps) == ("symmetric", 1e-5)
    assert max_diff(ours, peer, photos[index >= LARGE_FROM][0]) <= TOLERANCE


@pytest.mark.parametrize("index", variants(range(9), slow_from=6))
def test_timm_tf_efficientnet_b0_b8_match_at_odd_sizes(index: int, photos: dict) -> None:
    peer = randomize_(timm.create_model(f"tf_efficientnet_b{index}", pretrained=False))
    ours = effnet.create_model(f"efficientnet_b{index}", pretrained=peer.state_dict(), pretrained_layout="timm_tf")
    assert (ours.config.padding, ours.config.bn_eps) == ("same", 1e-3)
    for x in photos[index >= LARGE_FROM]:
        assert max_diff(ours, peer, x) <= TOLERANCE


@pytest.mark.parametrize("index", range(5))
def test_timm_tf_efficientnet_lite0_lite4_match_at_odd_sizes(index: int, photos: dict) -> None:
    peer = randomize_(timm.create_model(f"tf_efficientnet_lite{index}", pretrained=False))
    ours = effnet.create_model(f"efficientnet_lite{index}", pretrained=peer.state_dict(),
                               pretrained_layout="timm_tf")
    for x in photos[index >= LARGE_FROM]:
        assert max_diff(ours, peer, x) <= TOLERANCE


@pytest.mark.parametrize("index", variants(range(9), slow_from=6))
def test_efficientnet_pytorch_b0_b8_match_at_odd_sizes(index: int, photos: dict) -> None:
    efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
    # image_size=None gives the peer dynamic TF 'SAME' padding, exact at any input size
    peer = efficientnet_pytorch.EfficientNet.from_name(f"efficientnet-b{index}", image_size=None)
    peer.set_swish(memory_efficient=False)
    randomize_(peer)
    ours = effnet.create_model(f"efficientnet_b{index}", pretrained=peer.state_dict())
    assert (ours.config.padding, ours.config.bn_eps) == ("same", 1e-3)
    for x in photos[index >= LARGE_FROM]:
        assert max_diff(ours, peer, x) <= TOLERANCE


def keras_input(pixels: np.ndarray, model: torch.nn.Module) -> torch.Tensor:
    """Keras takes 0..255 pixels and normalizes inside; ours takes the normalized tensor."""
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().unsqueeze(0) / 255
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("size", ["224x224", "231x257"])
def test_keras_h5_matches_keras_logits(size: str) -> None:
    expected = np.load(FIXTURES / "keras_efficientnet_logits.npz")
    model = effnet.create_model("efficientnet_b0", num_classes=10, width=0.25, depth=0.5,
                                pretrained=FIXTURES / "keras_efficientnet_w025_d05.h5").eval()
    assert (model.config.padding, model.config.bn_eps) == ("same", 1e-3)
    assert model.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))
    assert model.preprocessing.std == pytest.approx((0.229, 0.224, 0.225))
    with torch.no_grad():
        logits = model(keras_input(expected[f"image_{size}"], model))[0].numpy()
    assert np.abs(logits - expected[f"logits_{size}"]).max() <= TOLERANCE


def test_keras_h5_needs_tf_padding_to_match() -> None:
    """The fixture is sensitive: symmetric padding visibly changes the logits."""
    expected = np.load(FIXTURES / "keras_efficientnet_logits.npz")
    model = effnet.create_model("efficientnet_b0", num_classes=10, width=0.25, depth=0.5, padding="symmetric",
                                pretrained=FIXTURES / "keras_efficientnet_w025_d05.h5").eval()
    with torch.no_grad():
        logits = model(keras_input(expected["image_224x224"], model))[0].numpy()
    assert np.abs(logits - expected["logits_224x224"]).max() > 1e-3


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def keras3_whole_model_h5(source: Path, target: Path) -> None:
    """Rewrite the Keras 2 fixture the way Keras 3's ``model.save("x.h5")`` lays it out: groups
    under ``model_weights``, no ``:0`` suffixes, depthwise kernels named ``kernel``."""
    with h5py.File(source, "r") as old, h5py.File(target, "w") as new:
        weights = new.create_group("model_weights")
        weights.attrs["layer_names"] = old.attrs["layer_names"]
        for layer in old.attrs["layer_names"]:
            layer = text(layer)
            group = weights.create_group(layer)
            names = []
            for name in old[layer].attrs["weight_names"]:
                renamed = text(name).split(":")[0].replace("depthwise_kernel", "kernel")
                group.create_dataset(renamed, data=old[layer][text(name)][()])
                names.append(renamed.encode())
            group.attrs["weight_names"] = names


def test_keras3_whole_model_h5_matches_keras_logits(tmp_path: Path) -> None:
    expected = np.load(FIXTURES / "keras_efficientnet_logits.npz")
    path = tmp_path / "keras3_model.h5"
    keras3_whole_model_h5(FIXTURES / "keras_efficientnet_w025_d05.h5", path)
    model = effnet.create_model("efficientnet_b0", num_classes=10, width=0.25, depth=0.5, pretrained=path).eval()
    with torch.no_grad():
        logits = model(keras_input(expected["image_231x257"], model))[0].numpy()
    assert np.abs(logits - expected["logits_231x257"]).max() <= TOLERANCE


def test_keras3_weights_h5_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "model.weights.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("layers/batch_normalization_10/vars/0", data=np.zeros(8, np.float32))
    with pytest.raises(CheckpointError, match=r"Keras 3 \.weights\.h5 .*model\.save\('model\.h5'\)"):
        effnet.create_model("efficientnet_b0", pretrained=path)


def test_timm_layout_is_told_apart_by_file_name(tmp_path: Path, odd_cat: torch.Tensor) -> None:
    peer = randomize_(timm.create_model("tf_efficientnet_b0", pretrained=False))
    named = tmp_path / "tf_efficientnet_b0.aa_in1k.safetensors"
    save_file(peer.state_dict(), str(named))
    ours = effnet.create_model("efficientnet_b0", pretrained=named)
    assert ours.config.padding == "same"
    assert max_diff(ours, peer, odd_cat) <= TOLERANCE

    anonymous = tmp_path / "model.pth"
    torch.save(peer.state_dict(), anonymous)
    with pytest.warns(UserWarning, match="layout='timm_tf'"):
        guessed = effnet.create_model("efficientnet_b0", pretrained=anonymous)
    assert guessed.config.padding == "symmetric"
    told = effnet.create_model("efficientnet_b0", pretrained=anonymous, pretrained_layout="timm_tf")
    assert max_diff(told, peer, odd_cat) <= TOLERANCE


def test_keys_are_mapped_by_name_not_position(cat: torch.Tensor) -> None:
    peer = randomize_(torchvision.models.efficientnet_b0(weights=None))
    shuffled = dict(reversed(list(peer.state_dict().items())))
    ours = effnet.create_model("efficientnet_b0", pretrained=shuffled)
    assert max_diff(ours, peer, cat) <= TOLERANCE


def test_training_checkpoint_wrappers_are_unwrapped(cat: torch.Tensor) -> None:
    peer = randomize_(torchvision.models.efficientnet_b0(weights=None))
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in peer.state_dict().items()}}
    ours = effnet.create_model("efficientnet_b0", pretrained=wrapped)
    assert max_diff(ours, peer, cat) <= TOLERANCE


def test_shape_mismatch_names_the_key_and_both_shapes() -> None:
    b0_weights = torchvision.models.efficientnet_b0(weights=None).state_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'features\.3\.0\.block\.3\.0\.weight' "
                                              r"\(our 'stages\.2\.0\.project\.conv\.weight'\): "
                                              r"checkpoint \(40, 144, 1, 1\), model \(48, 144, 1, 1\)"):
        effnet.create_model("efficientnet_b0", width=1.1, pretrained=b0_weights)
    with pytest.raises(CheckpointError, match="128 weights of the model are missing from the checkpoint"):
        effnet.create_model("efficientnet_b2", pretrained=b0_weights)


def test_deeper_checkpoint_is_refused_with_its_extra_keys() -> None:
    b1_weights = timm.create_model("tf_efficientnet_b1", pretrained=False).state_dict()
    with pytest.raises(CheckpointError, match=r"have no place in the model \(16 blocks in 7 stages\).*'blocks\.0\.1\."):
        effnet.create_model("efficientnet_b0", pretrained=b1_weights, pretrained_layout="timm_tf")


def test_layouts_are_detected_from_keys() -> None:
    checks = {
        "torchvision": torchvision.models.efficientnet_b0(weights=None).state_dict(),
        "lukemelas": {"_conv_stem.weight": torch.zeros(1), "_blocks.0._bn1.weight": torch.zeros(1)},
        "keras": {"stem_conv/kernel": torch.zeros(1)},
        "effnet": effnet.create_model("efficientnet_b0").state_dict(),
    }
    for name, state_dict in checks.items():
        assert detect_layout(state_dict).name == name
    timm_keys = timm.create_model("efficientnet_b0").state_dict()
    assert detect_layout(timm_keys, hint="tf_efficientnet_b0.pth").name == "timm_tf"
    with pytest.raises(CheckpointError, match="not an EfficientNet checkpoint of a known layout"):
        detect_layout({"fc.weight": torch.zeros(1)})
    assert set(LAYOUTS) == {"effnet", "torchvision", "timm", "timm_tf", "lukemelas", "keras"}


def test_convert_state_dict_gives_our_keys() -> None:
    peer = torchvision.models.efficientnet_b0(weights=None).state_dict()
    ours = effnet.create_model("efficientnet_b0")
    converted = convert_state_dict(peer, ours.config)
    assert set(converted) == set(ours.state_dict())
    assert converted["stages.1.0.expand.conv.weight"] is peer["features.2.0.block.0.0.weight"]
    assert converted["stages.0.0.se.reduce.bias"] is peer["features.1.0.block.1.fc1.bias"]


def test_nothing_warns_for_a_clean_conversion() -> None:
    peer = randomize_(torchvision.models.efficientnet_b0(weights=None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        effnet.create_model("efficientnet_b0", pretrained=peer.state_dict())
