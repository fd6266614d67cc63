"""Shared by the deployment tests: a tiny network with realistic BatchNorm statistics, and image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import effnet
from effnet.testing import randomize_statistics

RESOLUTION = 32


def tiny_model(padding: str = "symmetric", num_classes: int = 3, name: str = "efficientnet_b0") -> effnet.EfficientNet:
    """A quarter-width, quarter-depth network at 32 px whose BatchNorms hold non-trivial statistics.

    Fresh BatchNorms (mean 0, var 1, weight 1, bias 0) would make folding look exact by accident.
    """
    model = effnet.create_model(name, num_classes=num_classes, width=0.25, depth=0.25, resolution=RESOLUTION,
                                padding=padding)
    return randomize_statistics(model, biases=False)


def write_images(folder: Path, classes: int = 3, per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    """``folder/<class>/*.png``: random pictures, a different mean brightness per class."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 120, size=(size, size, 3)) + 60 * label
            Image.fromarray(pixels.astype(np.uint8)).save(folder / str(label) / f"{index}.png")
    return folder
