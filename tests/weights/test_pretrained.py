"""``pretrained=``: the registry, the real Lite0 weights end to end, tags, files and URLs."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import effnet
from effnet.registry import Preprocessing
from effnet.variants import variants
from effnet.weights import default_source, get_source, imagenet_class_names, list_sources
from effnet.weights.convert import LAYOUTS
from effnet.weights.hub import url_filename
from helpers.weights import max_diff, odd_photo, photo, randomize_

CATS = {"tiger cat", "tabby", "Egyptian cat"}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the network fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the test tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_real_lite0_weights_see_a_cat_and_an_espresso(offline: None) -> None:
    model = effnet.create_model("efficientnet_lite0", pretrained=True).eval()
    assert model.pretrained_source == "pypi"
    assert (model.config.padding, model.config.bn_eps) == ("same", 1e-3)
    assert model.preprocessing == Preprocessing(224, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert model.preprocessing.resize_size == 256
    with torch.no_grad():
        cat = model(photo("chelsea", model.preprocessing)).argmax().item()
        coffee = model(photo("coffee", model.preprocessing)).argmax().item()
    assert model.class_names[cat] in CATS
    assert model.class_names[coffee] == "espresso"


def test_lite0_package_file_loads_by_path_with_its_preprocessing() -> None:
    path = default_source("efficientnet_lite0").local_path()
    model = effnet.create_model("efficientnet_lite0", pretrained=path)
    assert model.preprocessing.mean == (0.5, 0.5, 0.5)
    assert model.class_names == imagenet_class_names()


def test_every_published_variant_has_a_default_source() -> None:
    for name in [v.name for v in variants("v1") + variants("lite")]:
        source = default_source(name)
        assert source.model == name and source.layout in LAYOUTS
        assert source.url or source.local_path() is not None
    assert default_source("efficientnet_b0").tag == "torchvision"
    with pytest.raises(ValueError, match="no pretrained weights are published for efficientnet_phi1.5"):
        default_source("efficientnet_phi1.5")


def test_registry_facts_are_consistent() -> None:
    sources = list_sources()
    assert len(sources) > 60
    for source in sources:
        assert source.license and source.preprocessing.interpolation in ("bicubic", "bilinear")
        assert source.url is None or source.url.startswith("https://")
        assert source.sha256 or source.md5 or source.url is None or "huggingface.co/timm" in source.url
        if source.sha256 and source.url:
            assert source.sha256[:8] in source.url or "huggingface" in source.url
    families = {s.tag for s in sources}
    assert {"torchvision", "timm", "tf_aa", "tf_ap", "tf_ns", "tf_lite", "lukemelas", "keras", "pypi"} <= families


def test_torchvision_sources_match_torchvision_metadata() -> None:
    for index in range(8):
        weights = getattr(torchvision.models, f"EfficientNet_B{index}_Weights").IMAGENET1K_V1
        source = get_source(f"efficientnet_b{index}", "torchvision")
        assert source.url == weights.url
        assert source.top1 == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        transforms = weights.transforms()
        assert source.preprocessing.resolution == transforms.crop_size[0]
        assert source.preprocessing.resize_size == transforms.resize_size[0]


def test_timm_sources_match_timm_pretrained_configs() -> None:
    for source in list_sources():
        if not source.layout.startswith("timm"):
            continue
        config = timm.models.get_pretrained_cfg(source.filename.removesuffix(".safetensors")).to_dict()
        resolution = (config.get("test_input_size") or config["input_size"])[-1]
        assert source.preprocessing.resolution == resolution
        assert source.preprocessing.crop_pct == pytest.approx(config.get("test_crop_pct") or config["crop_pct"])
        assert source.preprocessing.mean == pytest.approx(config["mean"])
        assert source.preprocessing.interpolation == config["interpolation"]


def test_imagenet_class_names_are_bundled() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000 and names[281] == "tabby" and names[967] == "espresso"


def test_registry_tag_loads_from_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, offline: None) -> None:
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    peer = randomize_(torchvision.models.efficientnet_b0(weights=None))
    source = get_source("efficientnet_b0", "torchvision")
    (tmp_path / "weights").mkdir()
    torch.save(peer.state_dict(), tmp_path / "weights" / source.filename)
    model = effnet.create_model("efficientnet_b0", pretrained="torchvision")
    assert model.preprocessing == source.preprocessing and model.preprocessing.resize_size == 256
    assert model.class_names == imagenet_class_names() and model.pretrained_source == "torchvision"
    assert max_diff(model, peer, photo()) <= 1e-4


def test_url_is_downloaded_and_its_name_tells_the_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path / "home"))
    peer = randomize_(timm.create_model("tf_efficientnet_b0", pretrained=False))
    file = tmp_path / "tf_efficientnet_b0.ns_jft_in1k.safetensors"
    save_file(peer.state_dict(), str(file))
    model = effnet.create_model("efficientnet_b0", pretrained=file.as_uri())
    assert model.config.padding == "same"
    assert (tmp_path / "home" / "weights" / url_filename(file.as_uri())).is_file()
    assert max_diff(model, peer, odd_photo()) <= 1e-4


def test_unknown_tag_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"no pretrained source 'tf_xx' for efficientnet_b0; known tags: .*tf_aa"):
        effnet.create_model("efficientnet_b0", pretrained="tf_xx")
