import errno
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effnet.data.images import ImageReadError, decode_image, load_image, to_rgb, verify_image
from helpers.images import bad_files, bomb_png, encoded, truncated_jpeg, write_png


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_every_bad_kind_is_refused_with_its_reason(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bad_files()[name])
    with pytest.raises(ImageReadError) as caught:
        verify_image(path)
    assert caught.value.path == path and name in str(caught.value)
    expected = {"zero_byte.png": "empty file", "corrupt.png": "corrupt", "truncated.png": "truncated",
                "text_renamed.jpg": "not an image", "bomb.png": "decompression bomb"}[name]
    assert expected in caught.value.reason
    with pytest.raises(ImageReadError):
        load_image(path)


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_bytes_in_memory_are_refused_like_files_with_a_kind(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bad_files()[name])
    with pytest.raises(ImageReadError) as from_file:
        load_image(path)
    with pytest.raises(ImageReadError) as from_bytes:
        decode_image(bad_files()[name], name)
    assert from_bytes.value.reason == from_file.value.reason and from_bytes.value.kind == from_file.value.kind
    assert from_bytes.value.kind == {"zero_byte.png": "empty", "corrupt.png": "corrupt", "truncated.png": "corrupt",
                                     "text_renamed.jpg": "not_an_image", "bomb.png": "too_many_pixels"}[name]
    assert str(from_bytes.value).startswith(f"{name}: ")


def test_bytes_decode_to_the_same_pixels_as_the_file(tmp_path):
    for fmt in ("PNG", "JPEG"):
        path = tmp_path / f"picture.{fmt.lower()}"
        path.write_bytes(encoded(fmt))
        assert np.array_equal(np.asarray(decode_image(path.read_bytes())), np.asarray(load_image(path)))


def test_truncated_jpeg_needs_a_decode_to_be_found(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(truncated_jpeg())
    verify_image(path)  # the header alone is intact
    with pytest.raises(ImageReadError, match="truncated"):
        verify_image(path, decode=True)
    with pytest.raises(ImageReadError, match="truncated"):
        load_image(path)


def test_pixel_limit_refuses_large_images_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encoded("PNG", size=100))
    verify_image(path, max_pixels=100 * 100)
    with pytest.raises(ImageReadError, match=r"100x100 = 10,000 pixels exceeds the limit of 9,999"):
        verify_image(path, max_pixels=9_999)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        load_image(path, max_pixels=9_999)


def _round_trip(tmp_path: Path, image: Image.Image, name: str) -> np.ndarray:
    path = tmp_path / name
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == image.size
    return np.asarray(loaded)


def test_grey_bilevel_and_palette_become_rgb(tmp_path):
    grey = np.array([[0, 77], [200, 255]], dtype=np.uint8)
    out = _round_trip(tmp_path, Image.fromarray(grey), "grey.png")
    assert np.array_equal(out, np.repeat(grey[..., None], 3, axis=2))

    bilevel = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("1")
    assert _round_trip(tmp_path, bilevel, "bw.png")[:, :, 0].tolist() == [[0, 255], [255, 0]]

    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putdata([0, 1])
    assert _round_trip(tmp_path, palette, "palette.png").tolist() == [[[10, 20, 30], [200, 100, 50]]]


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 0], [255, 0, 0, 128]]], dtype=np.uint8)
    out = _round_trip(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png")
    assert out[0, :3].tolist() == [[255, 0, 0], [255, 255, 255], [255, 255, 255]]
    assert out[0, 3].tolist() == [255, 127, 127]

    grey_alpha = Image.fromarray(np.array([[[40, 255], [40, 0]]], dtype=np.uint8), "LA")
    assert _round_trip(tmp_path, grey_alpha, "la.png")[0].tolist() == [[40, 40, 40], [255, 255, 255]]

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    palette.putdata([0, 1])
    palette.info["transparency"] = 0
    assert _round_trip(tmp_path, palette, "ptrans.png")[0].tolist() == [[255, 255, 255], [0, 128, 0]]


def test_cmyk_becomes_rgb(tmp_path):
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # pure red in ink
    out = _round_trip(tmp_path, cmyk, "cmyk.tif")
    assert out[1, 1].tolist() == [255, 0, 0]
    out = _round_trip(tmp_path, cmyk, "cmyk.jpg")
    assert np.abs(out[1, 1].astype(int) - [255, 0, 0]).max() <= 3


def test_sixteen_bit_grey_is_scaled_to_eight_bit(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 65535 // 2, 1000]], dtype=np.uint16)
    out = _round_trip(tmp_path, Image.fromarray(values), "deep.png")
    assert out[:, :, 0].tolist() == [[0, 1, 128], [255, 127, 4]]
    assert np.array_equal(out[:, :, 0], out[:, :, 2])


def test_int32_and_float_modes_are_scaled(tmp_path):
    as_int = Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32), "I")
    assert np.asarray(to_rgb(as_int))[0, :, 1].tolist() == [0, 255, 255]
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(as_float))[0, :, 0].tolist() == [0, 128, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[0, 0] = 255  # white top-left corner, landscape 4x2
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display rotated 90 degrees clockwise
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.size == (2, 4)
    assert np.asarray(loaded)[0, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("pil_warning", ["default", "error"])
def test_bomb_between_pillow_warning_and_error_limits_is_refused(tmp_path, pil_warning):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(side=10_000))  # 1e8 pixels: Pillow only warns, our limit refuses
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter(pil_warning, Image.DecompressionBombWarning)
        with pytest.raises(ImageReadError, match="decompression bomb"):
            verify_image(path)
    assert len(caught) == (1 if pil_warning == "default" else 0)


def test_a_link_to_itself_and_a_file_without_permission_are_reported_as_such(tmp_path, monkeypatch):
    loop = tmp_path / "loop.png"
    os.symlink(loop, loop)
    with pytest.raises(ImageReadError, match="a symbolic link loop") as caught:
        load_image(loop)
    assert caught.value.kind == "unreadable" and "corrupt" not in caught.value.reason
    locked = write_png(tmp_path / "locked.png")

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)  # root reads any file: fake the refusal
    with pytest.raises(ImageReadError, match="cannot read the file: permission denied") as caught:
        load_image(locked)
    assert "corrupt" not in caught.value.reason
