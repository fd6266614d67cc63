"""Training and evaluation presets (torchvision.transforms.v2), and batch-level mixup/cutmix.

Both presets take a PIL RGB image (see :mod:`effnet.data.images`) and return a normalized
float32 CHW tensor. The evaluation preset reads everything from a
:class:`~effnet.description.Preprocessing`, the one source of truth for a network's input. Its
resize (:class:`BoundedResize`) refuses, before any work, an image whose resized copy would
exceed ``max_pixels`` (a 1 x 100,000 pixel image would become 256 x 25,600,000): the rule of
:func:`effnet_runtime.portable.check_resized_pixels`, which the torch-free path applies too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2.functional import get_size

from effnet_runtime.portable import DEFAULT_MAX_PIXELS, check_resized_pixels

from ..description import Preprocessing
from ..errors import ConfigError

AUTO_AUGMENTS = ("autoaugment", "randaugment", "trivialaugment")
RANDAUGMENT_BINS = 11
"""RandAugment magnitudes run 0..10 as in the RandAugment and EfficientNet papers (M10 = strongest)."""


def interpolation_mode(name: str) -> InterpolationMode:
    return InterpolationMode(name.lower())


def _to_normalized_tensor(preprocessing: Preprocessing) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std))]


def _auto_augment(name: str, interpolation: InterpolationMode, fill: list[int], ra_magnitude: float,
                  ra_num_ops: int, ra_num_bins: int) -> v2.Transform:
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=interpolation, fill=fill)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide(interpolation=interpolation, fill=fill)
    if name == "randaugment":
        magnitude = int(round(ra_magnitude))
        if not 0 <= magnitude < ra_num_bins:
            raise ConfigError(f"ra_magnitude {ra_magnitude} is outside the scale 0..{ra_num_bins - 1}; "
                              f"pass ra_num_bins={magnitude + 1} or more for a finer scale reaching it")
        return v2.RandAugment(num_ops=ra_num_ops, magnitude=magnitude, num_magnitude_bins=ra_num_bins,
                              interpolation=interpolation, fill=fill)
    raise ConfigError(f"unknown auto_augment {name!r}; choose one of {AUTO_AUGMENTS} or None")


def train_transforms(preprocessing: Preprocessing, resolution: int | None = None,
                     scale: tuple[float, float] = (0.08, 1.0), hflip: float = 0.5, color_jitter: float | None = 0.4,
                     auto_augment: str | None = None, re_prob: float = 0.0, *,
                     ratio: tuple[float, float] = (3 / 4, 4 / 3), ra_magnitude: float = 9, ra_num_ops: int = 2,
                     ra_num_bins: int = RANDAUGMENT_BINS, degrees: float = 0.0, shear: float = 0.0,
                     fill: int | None = None, for_tensors: bool = False) -> Callable:
    """The training preset, applied in this order (each step only when enabled):

    RandomResizedCrop to ``resolution`` (default: the preprocessing's) with ``scale``/``ratio``
    and the preprocessing's interpolation, a random rotation by up to +-``degrees`` and shear
    by up to +-``shear`` degrees, horizontal flip with probability ``hflip``, ColorJitter
    (brightness, contrast and saturation by ``color_jitter``), ``auto_augment`` ("autoaugment"
    ImageNet policy, "randaugment" with ``ra_num_ops`` ops at ``ra_magnitude`` on a
    0..``ra_num_bins - 1`` scale, "trivialaugment"), conversion to a float tensor and
    normalization, then RandomErasing with probability ``re_prob`` (erased pixels become 0,
    the mean colour). Rotation, shear and the auto-augment policies fill uncovered pixels with
    the grey level ``fill`` (0-255; 0 suits digits on black), by default the mean colour.

    ``for_tensors``: the input is a uint8 CHW tensor (decoded on the device) rather than a PIL
    image; rotations, shears and the policies' geometric ops then interpolate bilinearly, the
    best tensors support (bicubic stays for the resized crop).
    """
    if fill is not None and not 0 <= fill <= 255:
        raise ConfigError(f"fill {fill} is not a grey level; give 0..255, or None (null) for the mean colour")
    if degrees < 0 or shear < 0:
        raise ConfigError(f"degrees {degrees} and shear {shear} are ranges (+-); give 0 or more")
    resolution = resolution or preprocessing.resolution
    interpolation = interpolation_mode(preprocessing.interpolation)
    geometric = interpolation
    if for_tensors and interpolation not in (InterpolationMode.NEAREST, InterpolationMode.BILINEAR):
        geometric = InterpolationMode.BILINEAR
    steps: list[v2.Transform] = [v2.RandomResizedCrop(resolution, scale=scale, ratio=ratio,
                                                      interpolation=interpolation, antialias=True)]
    fill_rgb = [round(255 * m) for m in preprocessing.mean] if fill is None else [fill] * 3
    if degrees > 0 or shear > 0:
        steps.append(v2.RandomAffine(degrees=degrees, shear=shear, interpolation=geometric, fill=fill_rgb))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    if auto_augment:
        steps.append(_auto_augment(auto_augment.lower(), geometric, fill_rgb, ra_magnitude, ra_num_ops,
                                   ra_num_bins))
    steps += _to_normalized_tensor(preprocessing)
    if re_prob > 0:
        steps.append(v2.RandomErasing(p=re_prob, value=0.0))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


class BoundedResize(v2.Resize):
    """The eval preset's resize of the short side to ``preprocessing.resize_size`` (antialiased,
    the preprocessing's interpolation), which first refuses, with an
    :class:`~effnet.data.images.ImageReadError` of kind ``too_many_pixels``, an image whose
    resized copy would have more than ``max_pixels`` pixels."""

    def __init__(self, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(preprocessing.resize_size, interpolation=interpolation_mode(preprocessing.interpolation),
                         antialias=True)
        self.preprocessing = preprocessing.to_dict()
        self.max_pixels = max_pixels

    def check(self, width: int, height: int, name: str | Path = "<image>") -> None:
        """Raise :class:`~effnet.data.images.ImageReadError` if a ``width`` x ``height`` image is too thin."""
        check_resized_pixels(Path(name), width, height, self.preprocessing, self.max_pixels)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = get_size(inpt)
        self.check(width, height)
        return super().transform(inpt, params)


def size_bound(transform: Callable) -> BoundedResize | None:
    """The :class:`BoundedResize` step of a preset, if it has one."""
    return next((step for step in getattr(transform, "transforms", ()) if isinstance(step, BoundedResize)), None)


def eval_transforms(preprocessing: Preprocessing, resolution: int | None = None,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> Callable:
    """The evaluation preset: resize the short side to ``resolution / crop_pct`` (antialiased,
    the preprocessing's interpolation; an image whose resized copy would exceed ``max_pixels``
    is refused, see :class:`BoundedResize`), center-crop ``resolution``, scale to [0, 1],
    normalize."""
    if resolution is not None and resolution != preprocessing.resolution:
        preprocessing = dataclasses.replace(preprocessing, resolution=resolution)
    return v2.Compose([
        BoundedResize(preprocessing, max_pixels),
        v2.CenterCrop(preprocessing.resolution),
        *_to_normalized_tensor(preprocessing),
        v2.ToPureTensor(),
    ])


def smooth_one_hot(targets: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """Soft targets: ``1 - smoothing + smoothing / C`` on the true class, ``smoothing / C`` elsewhere."""
    off = label_smoothing / num_classes
    soft = torch.full((targets.shape[0], num_classes), off, device=targets.device)
    return soft.scatter_(1, targets.long().view(-1, 1), 1.0 - label_smoothing + off)


class MixupCutmix:
    """Mixup / CutMix on a batch: ``(images, targets) -> (mixed images, soft targets)``.

    With probability ``prob`` the batch is mixed with itself shifted by one sample: CutMix
    (chosen with probability ``switch_prob`` when both are enabled) pastes a box covering
    ``1 - lam`` of the image, Mixup blends the whole image, with ``lam ~ Beta(alpha, alpha)``.
    The targets mix the same way (CutMix uses the box's exact area) on top of label
    smoothing, so every row sums to 1. Randomness comes from torch's global generator.
    Loss: ``torch.nn.functional.cross_entropy(logits, soft_targets)``. The alphas and
    ``prob`` may be changed between steps (progressive learning).
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.0) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1 or not 0 <= label_smoothing < 1:
            raise ConfigError(f"invalid mixup/cutmix settings: mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}, "
                              f"prob={prob}, label_smoothing={label_smoothing}")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft = smooth_one_hot(targets, self.num_classes, self.label_smoothing)
        if not self.enabled or torch.rand(()).item() >= self.prob:
            return images, soft
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or torch.rand(()).item() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = torch.distributions.Beta(alpha, alpha).sample().item()
        partner = images.roll(1, dims=0)
        if use_cutmix:
            images, lam = _paste_box(images, partner, lam)
        else:
            images = images * lam + partner * (1.0 - lam)
        return images, soft * lam + soft.roll(1, dims=0) * (1.0 - lam)


def _paste_box(images: torch.Tensor, partner: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """Paste a random box of area ``1 - lam`` from ``partner``; returns the images and the kept fraction."""
    height, width = images.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    center_y = int(torch.randint(height, ()).item())
    center_x = int(torch.randint(width, ()).item())
    top, bottom = max(center_y - cut_h // 2, 0), min(center_y + cut_h // 2, height)
    left, right = max(center_x - cut_w // 2, 0), min(center_x + cut_w // 2, width)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)

