"""Reading image files safely: every mode becomes 8-bit RGB, bad files raise one error type.

One loader for training, evaluation and inference, so a picture is decoded the same way
everywhere; it lives in :mod:`effnet_runtime.portable` (no PyTorch), whose docstring lists the rules
(EXIF orientation, transparency on white, 16-bit greyscale scaled, decompression bombs
refused), so that consumers without PyTorch decode exactly the same way. Pillow's own limit
(``PIL.Image.MAX_IMAGE_PIXELS``; it warns above it and refuses above twice it) applies as well,
so raise both to read larger images.
"""

from __future__ import annotations

from pathlib import Path

from effnet_runtime.portable import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    READ_ERROR_KINDS,
    WHITE,
    ImageReadError,
    decode_image,
    has_image_extension,
    load_image,
    open_image,
    read_error,
    to_rgb,
)

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "READ_ERROR_KINDS", "WHITE", "ImageReadError", "decode_image",
           "has_image_extension", "load_image", "to_rgb", "verify_image"]


def verify_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = False) -> None:
    """Raise :class:`~effnet_runtime.portable.ImageReadError` unless ``path`` looks like a usable image.

    The cheap check opens the header (format, size, pixel limit) and runs Pillow's
    ``verify`` (for PNG it reads every chunk and its checksum, so corrupt or truncated PNGs
    are caught). ``decode=True`` also decodes the pixels, which catches truncated or
    corrupt JPEGs too; JPEGs are decoded at 1/8 scale, which still reads the whole stream.
    """
    path = Path(path)
    try:
        with open_image(path, max_pixels) as image:
            image.verify()
        if decode:
            with open_image(path, max_pixels) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except ImageReadError:
        raise
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, struct.error ...) on bad files
        raise read_error(path, error) from error
