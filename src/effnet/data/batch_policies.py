"""The auto-augment policies in batched form: RandAugment, TrivialAugmentWide and AutoAugment (ImageNet).

The policy tables (ops, magnitude ranges, signs) follow torchvision's. :class:`Policy` draws
each sample's ops and signed magnitudes; a step's geometric ops (shear, translate, rotate)
become one affine matrix per sample (:func:`policy_matrices`) and its colour ops run on the
samples that drew them (:func:`policy_colour_ops`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .batch_ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_sharpness,
    affine_matrices,
    autocontrast,
    equalize,
    invert,
    posterize,
    rand,
    randint,
    solarize,
)

# The ops, numbered; the geometric ones (shear, translate, rotate) become one warp per sample.
(IDENTITY, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y, ROTATE, BRIGHTNESS, COLOR, CONTRAST, SHARPNESS,
 POSTERIZE, SOLARIZE, AUTOCONTRAST, EQUALIZE, INVERT) = range(15)
OP_NAMES = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
            "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
SIGNED_OPS = (SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y, ROTATE, BRIGHTNESS, COLOR, CONTRAST, SHARPNESS)
WIDE_OPS = tuple(range(14))
"""RandAugment's and TrivialAugmentWide's ops (all but Invert), in the order they are drawn from."""

# The ImageNet AutoAugment policy: 25 pairs of (op, probability, magnitude bin of 10).
IMAGENET_POLICY = (
    ((POSTERIZE, 0.4, 8), (ROTATE, 0.6, 9)), ((SOLARIZE, 0.6, 5), (AUTOCONTRAST, 0.6, 0)),
    ((EQUALIZE, 0.8, 0), (EQUALIZE, 0.6, 0)), ((POSTERIZE, 0.6, 7), (POSTERIZE, 0.6, 6)),
    ((EQUALIZE, 0.4, 0), (SOLARIZE, 0.2, 4)), ((EQUALIZE, 0.4, 0), (ROTATE, 0.8, 8)),
    ((SOLARIZE, 0.6, 3), (EQUALIZE, 0.6, 0)), ((POSTERIZE, 0.8, 5), (EQUALIZE, 1.0, 0)),
    ((ROTATE, 0.2, 3), (SOLARIZE, 0.6, 8)), ((EQUALIZE, 0.6, 0), (POSTERIZE, 0.4, 6)),
    ((ROTATE, 0.8, 8), (COLOR, 0.4, 0)), ((ROTATE, 0.4, 9), (EQUALIZE, 0.6, 0)),
    ((EQUALIZE, 0.0, 0), (EQUALIZE, 0.8, 0)), ((INVERT, 0.6, 0), (EQUALIZE, 1.0, 0)),
    ((COLOR, 0.6, 4), (CONTRAST, 1.0, 8)), ((ROTATE, 0.8, 8), (COLOR, 1.0, 2)),
    ((COLOR, 0.8, 8), (SOLARIZE, 0.8, 7)), ((SHARPNESS, 0.4, 7), (INVERT, 0.6, 0)),
    ((SHEAR_X, 0.6, 5), (EQUALIZE, 1.0, 0)), ((COLOR, 0.4, 0), (EQUALIZE, 0.6, 0)),
    ((EQUALIZE, 0.4, 0), (SOLARIZE, 0.2, 4)), ((SOLARIZE, 0.6, 5), (AUTOCONTRAST, 0.6, 0)),
    ((INVERT, 0.6, 0), (EQUALIZE, 1.0, 0)), ((COLOR, 0.6, 4), (CONTRAST, 1.0, 8)),
    ((EQUALIZE, 0.8, 0), (EQUALIZE, 0.6, 0)),
)
AUTOAUGMENT_BINS = 10


def magnitude_table(wide: bool, bins: int, size: int) -> torch.Tensor:
    """``(15, bins)`` unsigned magnitudes of every op on a ``size`` x ``size`` image: the
    RandAugment/AutoAugment ranges, or TrivialAugmentWide's (``wide``). Shear is the shear
    factor, translate pixels, rotate degrees, the enhancements ``factor - 1``, posterize the
    bits kept, solarize the lowest level inverted; ops without a magnitude get 0."""
    def ramp(top: float) -> torch.Tensor:
        return torch.linspace(0.0, top, bins)

    table = torch.zeros(len(OP_NAMES), bins)
    table[[SHEAR_X, SHEAR_Y]] = ramp(0.99 if wide else 0.3)
    table[[TRANSLATE_X, TRANSLATE_Y]] = ramp(32.0 if wide else 150.0 / 331.0 * size)
    table[ROTATE] = ramp(135.0 if wide else 30.0)
    table[[BRIGHTNESS, COLOR, CONTRAST, SHARPNESS]] = ramp(0.99 if wide else 0.9)
    table[POSTERIZE] = (8 - torch.arange(bins) / ((bins - 1) / (6 if wide else 4))).round()
    # the threshold fraction runs 1..0; levels >= 255 x fraction invert (whole levels: the ceiling)
    table[SOLARIZE] = (torch.linspace(1.0, 0.0, bins).double() * 255).ceil().float()
    return table


@dataclass(frozen=True)
class Policy:
    """An auto-augment policy in batched form: ``kind`` is "randaugment", "trivialaugment" or
    "autoaugment"; ``steps`` ops per image (RandAugment's ``num_ops``; 1 and 2 for the others)."""

    kind: str
    steps: int
    magnitude: int = 0
    bins: int = AUTOAUGMENT_BINS

    def draw(self, batch: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample and step, the op (``(batch, steps)`` long) and its signed magnitude (float)."""
        device = generator.device
        table = magnitude_table(self.kind == "trivialaugment", self.bins, size).to(device)
        shape = (batch, self.steps)
        if self.kind == "autoaugment":
            pairs = torch.tensor(IMAGENET_POLICY, dtype=torch.float32, device=device)  # (25, 2, 3)
            chosen = pairs[randint(len(IMAGENET_POLICY), (batch,), generator)]  # (batch, 2, 3)
            ops = chosen[..., 0].long()
            ops = torch.where(rand(shape, generator) <= chosen[..., 1], ops, torch.full_like(ops, IDENTITY))
            bins = chosen[..., 2].long()
        else:
            ops = torch.tensor(WIDE_OPS, device=device)[randint(len(WIDE_OPS), shape, generator)]
            bins = (randint(self.bins, shape, generator) if self.kind == "trivialaugment"
                    else torch.full(shape, self.magnitude, device=device))
        magnitudes = table[ops, bins]
        signed = torch.isin(ops, torch.tensor(SIGNED_OPS, device=device))
        flip = signed & (rand(shape, generator) <= 0.5)
        magnitudes = torch.where(flip, -magnitudes, magnitudes)
        translate = (ops == TRANSLATE_X) | (ops == TRANSLATE_Y)
        return ops, torch.where(translate, magnitudes.trunc(), magnitudes)  # whole pixels, as the policies shift


def policy_matrices(ops: torch.Tensor, magnitudes: torch.Tensor, size: int) -> torch.Tensor:
    """The inverse matrices ``(batch, 3, 3)`` of one policy step's geometric ops (identity for
    the samples whose op is not geometric)."""
    zero = torch.zeros_like(magnitudes)
    angle = torch.where(ops == ROTATE, -magnitudes, zero)  # the policies rotate counter-clockwise
    shear_x = torch.where(ops == SHEAR_X, magnitudes, zero)
    shear_y = torch.where(ops == SHEAR_Y, magnitudes, zero)
    translate = torch.stack([torch.where(ops == TRANSLATE_X, magnitudes, zero),
                             torch.where(ops == TRANSLATE_Y, magnitudes, zero)], dim=1)
    return affine_matrices(angle, shear_x, shear_y, translate, (ops == SHEAR_X) | (ops == SHEAR_Y), size)


def policy_colour_ops(magnitudes: torch.Tensor) -> dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The colour ops of a policy step as ``f(subset, index)``, reading each sample's
    magnitude at ``index`` in ``magnitudes`` (``(batch,)`` on the device)."""
    return {
        BRIGHTNESS: lambda x, i: adjust_brightness(x, 1 + magnitudes[i]),
        COLOR: lambda x, i: adjust_saturation(x, 1 + magnitudes[i]),
        CONTRAST: lambda x, i: adjust_contrast(x, 1 + magnitudes[i]),
        SHARPNESS: lambda x, i: adjust_sharpness(x, 1 + magnitudes[i]),
        POSTERIZE: lambda x, i: posterize(x, magnitudes[i]),
        SOLARIZE: lambda x, i: solarize(x, magnitudes[i]),
        AUTOCONTRAST: lambda x, i: autocontrast(x),
        EQUALIZE: lambda x, i: equalize(x),
        INVERT: lambda x, i: invert(x),
    }
