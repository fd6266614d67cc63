"""Shared by the weights tests: peers with every tensor random, and the real photos."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from skimage import data
from torch import nn

from effnet.data.transforms import eval_transforms
from effnet.registry import Preprocessing

ODD_SIZE = (231, 257)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine and running statistics and random biases (a fresh model has
    BN 1/0 and zero biases, which would hide a swapped tensor); conv weights keep their init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval()


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
