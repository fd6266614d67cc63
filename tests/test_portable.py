"""effnet_runtime.portable: the torch-free preprocessing equals effnet's eval transform, the prediction
record follows its schema, and the module runs where PyTorch and effnet cannot be imported."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from effnet.data.images import load_image
from effnet.data.transforms import eval_transforms
from effnet.description import INCEPTION_MEAN, INCEPTION_STD, Preprocessing
from effnet_runtime import portable

PREPROCESSINGS = [Preprocessing(32, 0.875), Preprocessing(40, 1.0, "bilinear", INCEPTION_MEAN, INCEPTION_STD),
                  Preprocessing(24, 0.9, "nearest")]


def _picture(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(rgba, "RGBA")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    if mode == "P":
        palette = image.convert("RGB").quantize(16)
        palette.info["transparency"] = 3
        return palette
    return image if mode == "RGBA" else image.convert(mode)


CASES = [("RGB", (37, 53)), ("L", (61, 29)), ("RGBA", (33, 33)), ("P", (45, 70)), ("I;16", (50, 41)),
         ("CMYK", (31, 64)), ("LA", (100, 23))]


@pytest.mark.parametrize("preprocessing", PREPROCESSINGS, ids=lambda p: f"{p.resolution}-{p.interpolation}")
@pytest.mark.parametrize(("mode", "size"), CASES, ids=[mode for mode, _ in CASES])
def test_preprocess_equals_the_eval_transform_on_odd_sizes_and_modes(tmp_path: Path, preprocessing: Preprocessing,
                                                                      mode: str, size: tuple[int, int]) -> None:
    path = tmp_path / ("picture.tif" if mode in ("I;16", "CMYK") else "picture.png")
    _picture(mode, size).save(path)
    expected = eval_transforms(preprocessing)(load_image(path)).numpy()
    actual = portable.preprocess(portable.load_image(path), preprocessing.to_dict())
    assert actual.shape == expected.shape == (3, preprocessing.resolution, preprocessing.resolution)
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_preprocess_equals_the_eval_transform_on_a_rotated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    _picture("RGB", (80, 48)).save(path, quality=90, exif=exif)
    image = portable.load_image(path)
    assert image.size == (48, 80)
    preprocessing = PREPROCESSINGS[0]
    np.testing.assert_allclose(portable.preprocess(image, preprocessing.to_dict()),
                               eval_transforms(preprocessing)(load_image(path)).numpy(), atol=1e-5, rtol=0)


def test_a_very_thin_image_is_refused_before_it_is_resized() -> None:
    thin = Image.new("RGB", (1, 100_000))  # 100,000 pixels, 256 x 25,600,000 once resized for B0
    with pytest.raises(portable.ImageReadError, match="too thin to classify") as caught:
        portable.preprocess(thin, Preprocessing(224, 0.875).to_dict(), name="thin.png")
    assert caught.value.kind == "too_many_pixels" and "256x25600000" in caught.value.reason


def test_records_follow_the_schema_and_rows_follow_the_csv_columns() -> None:
    probabilities = portable.softmax(np.array([[2.0, 0.5, 3.0]]))[0]
    ranked = portable.top_classes(probabilities, ["a", "b", "c"], 2)
    assert [name for _, name, _ in ranked] == ["c", "a"]
    good = portable.prediction_record("x.png", "efficientnet_b0", ranked)
    bad = portable.prediction_record("y.png", "efficientnet_b0", error="not an image file")
    for record in (good, bad, portable.prediction_record("z.png", None, ranked, legacy="serve"),
                   portable.prediction_record("z.png", None, ranked, legacy="predict")):
        jsonschema.validate(json.loads(json.dumps(record)), portable.PREDICTION_SCHEMA)
    assert good["top_k"][0] == {"rank": 1, "class_index": 2, "class_name": "c",
                                "probability": pytest.approx(float(probabilities[2]))}
    assert portable.csv_rows(good)[1][:4] == ["x.png", 2, 0, "a"]
    assert portable.csv_rows(bad) == [["y.png", "", "", "", "", "not an image file"]]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "top_k": [{"rank": 0}]}, portable.PREDICTION_SCHEMA)


BLOCKED = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "effnet"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
import effnet_portable as portable, json
image = portable.load_image(sys.argv[2])
print(json.dumps(portable.preprocess(image, json.loads(sys.argv[3])).tolist()))
"""


def test_the_module_runs_without_pytorch_or_effnet(tmp_path: Path) -> None:
    (tmp_path / "effnet_portable.py").write_text(Path(portable.__file__).read_text())  # as ship copies it
    image = tmp_path / "picture.png"
    _picture("RGBA", (30, 45)).save(image)
    preprocessing = PREPROCESSINGS[1]
    done = subprocess.run([sys.executable, "-I", "-c", BLOCKED, str(tmp_path), str(image),
                           json.dumps(preprocessing.to_dict())], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = eval_transforms(preprocessing)(load_image(image))
    np.testing.assert_allclose(np.array(json.loads(done.stdout)), expected.numpy(), atol=1e-5)
    assert isinstance(expected, torch.Tensor)


def test_decoding_a_bomb_in_memory_is_refused_before_decoding() -> None:
    buffer = io.BytesIO()
    Image.new("L", (300, 300)).save(buffer, format="PNG")
    with pytest.raises(portable.ImageReadError, match="decompression bomb"):
        portable.decode_image(buffer.getvalue(), "big.png", max_pixels=300 * 299)


@pytest.mark.timeout(60)  # opening the FIFO would block
def test_a_fifo_or_a_device_is_not_a_regular_file_and_is_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO (named pipe)"), (Path("/dev/zero"), "a character device"),
                       (tmp_path, "a folder")):
        assert portable.special_file(path) == kind
        with pytest.raises(portable.ImageReadError, match=f"not a regular file but {re.escape(kind)}") as caught:
            portable.load_image(path)
        assert caught.value.kind == "unreadable"
    assert portable.special_file(tmp_path / "missing.png") is None
