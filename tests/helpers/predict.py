"""Shared by the tests of ``effnet predict``'s outputs: class names that need quoting, a file
name that is not UTF-8, and the command itself."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from effnet.cli import main

CLASSES = ["round, filled", 'say "cheese"', "plain"]
"""The classes of conftest's ``tiny_checkpoint``: a comma and quotes, to be quoted in CSV."""
BAD_NAME = b"img_\xff.png"
"""A file name that is not UTF-8 (conftest's ``odd_images`` holds one)."""


def write_images(folder: Path, names: list[bytes]) -> Path:
    """Random 30 x 30 PNGs named ``names`` (bytes, as the file system takes them) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(
            os.path.join(os.fsencode(folder), name), format="PNG")
    return folder


def predict(images: Path, checkpoint: Path, *extra: str) -> int:
    """``effnet predict`` on the CPU, one image a batch, no progress bar; its exit code."""
    return main(["predict", str(images), "--checkpoint", str(checkpoint), "--device", "cpu", "--batch-size", "1",
                 "--no-progress", *extra])
