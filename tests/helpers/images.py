"""Shared by the image tests: encoded pictures and every kind of unusable file."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(side: int = 30_000) -> bytes:
    """A 60-byte PNG whose header declares side x side greyscale pixels."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


def encoded(fmt: str, size: int = 48) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def bad_files() -> dict[str, bytes]:
    """Every kind of unusable file, by file name; each needs a header check to be found."""
    png = encoded("PNG")
    corrupt = bytearray(png)
    corrupt[len(png) // 2: len(png) // 2 + 40] = b"\x55" * 40
    return {
        "zero_byte.png": b"",
        "corrupt.png": bytes(corrupt),
        "truncated.png": png[: len(png) // 2],
        "text_renamed.jpg": b"this is a note, not a picture\n" * 10,
        "bomb.png": bomb_png(),
    }


def truncated_jpeg() -> bytes:
    jpeg = encoded("JPEG")
    return jpeg[: len(jpeg) // 2]


def write_png(path: Path) -> Path:
    """A black 8 x 8 PNG at ``path`` (its folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path
