"""JPEG batches decode to the pixels of the CPU path, turned by their EXIF orientation."""

from __future__ import annotations

import io
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from effnet.data import jpeg
from effnet.data.images import load_image


def jpeg_bytes(image: Image.Image, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@pytest.fixture(params=["installed", "torchvision"], autouse=True)
def decoder(request, monkeypatch):
    """Every test with the decoder this environment picks, then with torchvision's fallback."""
    jpeg._decoder.cache_clear()
    if request.param == "torchvision":
        monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # as if TorchCodec were missing
    yield request.param
    jpeg._decoder.cache_clear()


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    rng = np.random.default_rng(0)
    pixels = np.zeros((24, 40, 3), dtype=np.uint8)  # not square, not symmetric: every turn differs
    pixels[:8, :10] = (250, 20, 20)
    pixels[16:, 30:] = (20, 20, 250)
    pixels += rng.integers(0, 5, pixels.shape, dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_decodes_as_the_cpu_path(tmp_path, picture, orientation) -> None:
    data = jpeg_bytes(picture, orientation)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    expected = torch.from_numpy(np.array(load_image(path))).permute(2, 0, 1)
    assert np.array_equal(np.asarray(load_image(path)),
                          np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")))
    [decoded] = jpeg.decode_jpegs([as_tensor(data)], torch.device("cpu"))
    assert decoded.shape == expected.shape
    assert (decoded.int() - expected.int()).abs().max() <= 1  # libjpeg builds may round one level apart


def test_a_batch_decodes_in_one_call_in_input_order(picture) -> None:
    small = picture.resize((20, 12))
    payloads = [as_tensor(jpeg_bytes(picture)), as_tensor(jpeg_bytes(small, 6))]
    first, second = jpeg.decode_jpegs(payloads, torch.device("cpu"))
    assert first.shape == (3, 24, 40) and second.shape == (3, 20, 12) and first.dtype == torch.uint8
    assert jpeg.decode_jpegs(payloads[:1], torch.device("cpu"))[0].shape == (3, 24, 40)


def test_a_bad_file_fails_the_batch_with_runtime_error(picture) -> None:
    bad = as_tensor(b"\xff\xd8\xff\xe0" + b"x" * 64)
    with pytest.raises(RuntimeError):
        jpeg.decode_jpegs([as_tensor(jpeg_bytes(picture)), bad], torch.device("cpu"))


def test_the_decoder_is_torchcodec_when_installed_and_warns_nothing(decoder, picture) -> None:
    try:
        import torchcodec.decoders  # noqa: F401
    except ImportError:
        assert jpeg.decoder_name() == "torchvision"
    else:
        assert jpeg.decoder_name() == "torchcodec"
    with warnings.catch_warnings():  # torchvision's deprecation notice is kept from the user
        warnings.simplefilter("error")
        jpeg.decode_jpegs([as_tensor(jpeg_bytes(picture))], torch.device("cpu"))


def _exif_jpeg(tiff: bytes) -> torch.Tensor:
    """A JPEG header with an APP0 segment, then an APP1 EXIF block holding ``tiff``."""
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    app1 = b"Exif\x00\x00" + tiff
    return as_tensor(b"\xff\xd8" + app0 + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + b"\xff\xda")


@pytest.mark.parametrize("order", ["little", "big"])
def test_the_exif_orientation_is_read_in_either_byte_order(order) -> None:
    def tiff(tag: int, value: int) -> bytes:
        entry = (tag.to_bytes(2, order) + (3).to_bytes(2, order) + (1).to_bytes(4, order)
                 + value.to_bytes(2, order) + b"\x00\x00")
        other = (0x010F).to_bytes(2, order) + (2).to_bytes(2, order) + (4).to_bytes(4, order) + b"abc\x00"
        return ((b"II" if order == "little" else b"MM") + (42).to_bytes(2, order) + (8).to_bytes(4, order)
                + (2).to_bytes(2, order) + other + entry + (0).to_bytes(4, order))

    assert [jpeg.exif_orientation(_exif_jpeg(tiff(0x0112, value))) for value in range(1, 9)] == list(range(1, 9))
    assert jpeg.exif_orientation(_exif_jpeg(tiff(0x0112, 9))) == 1  # not an orientation: left as it is
    assert jpeg.exif_orientation(_exif_jpeg(tiff(0x0110, 6))) == 1  # no orientation entry
    assert jpeg.exif_orientation(_exif_jpeg(tiff(0x0112, 6)[:20])) == 1  # cut short
    assert jpeg.exif_orientation(as_tensor(b"\xff\xd8\xff\xda" + b"\x00" * 8)) == 1  # no metadata at all


def test_orient_turns_as_pil_does(picture) -> None:
    pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        shown = picture.copy()
        shown.info["exif"] = exif.tobytes()
        expected = torch.from_numpy(np.array(ImageOps.exif_transpose(shown))).permute(2, 0, 1)
        assert torch.equal(jpeg.orient(pixels, orientation), expected), orientation
