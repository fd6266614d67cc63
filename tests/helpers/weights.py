"""Shared by the weights tests: peers with every tensor random, and the real photos."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from skimage import data
from torch import nn

from effnet.data.transforms import eval_transforms
from effnet.registry import Preprocessing
from effnet.testing import randomize_statistics as randomize_  # noqa: F401 (shared by the weights tests)

ODD_SIZE = (231, 257)


def photo(name: str = "chelsea", preprocessing: Preprocessing | None = None) -> torch.Tensor:
    """A scikit-image photo through the eval preprocessing, as a batch of one."""
    image = Image.fromarray(getattr(data, name)())
    return eval_transforms(preprocessing or Preprocessing(224))(image).unsqueeze(0)


def odd_photo(size: tuple[int, int] = ODD_SIZE) -> torch.Tensor:
    """The cat photo resized to an odd height and width (ImageNet normalization)."""
    image = Image.fromarray(data.chelsea()).resize((size[1], size[0]), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    mean = torch.tensor(Preprocessing(224).mean).view(3, 1, 1)
    std = torch.tensor(Preprocessing(224).std).view(3, 1, 1)
    return ((pixels - mean) / std).unsqueeze(0)


def max_diff(ours: nn.Module, peer: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (ours.eval()(x) - peer.eval()(x)).abs().max().item()
