"""Reading image files safely: every mode becomes 8-bit RGB, bad files raise one error type.

One loader for training, evaluation and inference, so a picture is decoded the same way
everywhere:

- EXIF orientation is applied (a phone photo comes out the way it is displayed).
- Transparency (RGBA, LA, palette with a transparent colour) is composited on white, so a
  transparent background reads as white paper instead of whatever colour happens to be
  stored under alpha 0 (often black).
- 16-bit and 32-bit integer greyscale (``I;16*``, ``I``) is scaled from 0-65535 to 0-255
  (65535 -> 255, rounding to nearest); float greyscale (``F``) is read as 0-1 and scaled.
  Values outside those ranges are clipped.
- Greyscale, bilevel, palette, CMYK and YCbCr go through Pillow's conversion to RGB.
- Images with more than ``max_pixels`` pixels are refused before decoding (decompression
  bombs). Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``; it warns above it and refuses
  above twice it) applies as well, so raise both to read larger images.
"""

from __future__ import annotations

import errno
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's default warning threshold: about 0.25 GiB of RGBA pixels."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
WHITE = (255, 255, 255)


READ_ERROR_KINDS = ("empty", "not_an_image", "too_many_pixels", "corrupt", "missing", "unreadable")


class ImageReadError(ValueError):
    """A file that cannot be used as an image: unreadable, corrupt, truncated or too large.

    ``kind`` is one of :data:`READ_ERROR_KINDS`; ``reason`` says it in words.
    """

    def __init__(self, path: Path, reason: str, kind: str = "corrupt") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.kind = kind


def has_image_extension(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _read_error(path: Path, error: BaseException) -> ImageReadError:
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageReadError(path, f"refused as a possible decompression bomb ({error})", "too_many_pixels")
    if isinstance(error, Image.UnidentifiedImageError):
        return ImageReadError(path, "not an image file (Pillow cannot identify it)", "not_an_image")
    if isinstance(error, FileNotFoundError):
        return ImageReadError(path, "file not found", "missing")
    if isinstance(error, OSError) and error.errno is not None:  # the file system refused, not the decoder
        return ImageReadError(path, f"cannot read the file: {_os_reason(error)}", "unreadable")
    text = str(error) or type(error).__name__
    return ImageReadError(path, f"corrupt or truncated image ({text})", "corrupt")


def _os_reason(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied (make it readable, or remove it)"
    if error.errno == errno.ELOOP:
        return "a symbolic link loop (the link points back to itself)"
    if isinstance(error, IsADirectoryError):
        return "it is a folder"
    return error.strerror or str(error)


def _open(path: Path, max_pixels: int, data: bytes | None = None) -> Image.Image:
    """Open ``path``, or the in-memory file ``data`` named ``path``, checking size and pixel count."""
    if (len(data) if data is not None else path.stat().st_size) == 0:
        raise ImageReadError(path, "empty file (0 bytes)", "empty")
    image = Image.open(io.BytesIO(data) if data is not None else path)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageReadError(path, f"refused as a possible decompression bomb: {width}x{height} = "
                                   f"{width * height:,} pixels exceeds the limit of {max_pixels:,} (max_pixels)",
                             "too_many_pixels")
    return image


def verify_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = False) -> None:
    """Raise :class:`ImageReadError` unless ``path`` looks like a usable image.

    The cheap check opens the header (format, size, pixel limit) and runs Pillow's
    ``verify`` (for PNG it reads every chunk and its checksum, so corrupt or truncated PNGs
    are caught). ``decode=True`` also decodes the pixels, which catches truncated or
    corrupt JPEGs too; JPEGs are decoded at 1/8 scale, which still reads the whole stream.
    """
    path = Path(path)
    try:
        with _open(path, max_pixels) as image:
            image.verify()
        if decode:
            with _open(path, max_pixels) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except ImageReadError:
        raise
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, struct.error ...) on bad files
        raise _read_error(path, error) from error


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``image`` following the rules in the module docstring."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        values = np.asarray(image).astype(np.float64)
        if mode == "F":
            values = values * 255.0
        else:
            values = values * (255.0 / 65535.0)
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _decode(path: Path, max_pixels: int, data: bytes | None = None) -> Image.Image:
    try:
        with _open(path, max_pixels, data) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except ImageReadError:
        raise
    except Exception as error:  # see verify_image
        raise _read_error(path, error) from error


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` into an 8-bit RGB PIL image; raises :class:`ImageReadError` on any bad file."""
    return _decode(Path(path), max_pixels)


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """:func:`load_image` for a file held in memory (an upload); ``name`` labels its errors."""
    return _decode(Path(name), max_pixels, data)
