"""Image ops on a whole batch on the device, each sample with its own parameters.

Batched forms of torchvision's per-image ops for :mod:`effnet.data.batch_augment`: the
random draws (on a given generator, per sample), the geometry (RandomResizedCrop's boxes and
resize, affine matrices and one ``grid_sample`` warp for the batch), the colour ops (on float
images holding whole grey levels 0..255, rounded as the per-image functions round when they
convert back to uint8), RandomErasing, and :func:`apply_subsets`, which runs each op on the
samples that drew it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


# ------------------------------------------------------------ random draws
def rand(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """``torch.rand`` from ``generator``, on its device."""
    return torch.rand(tuple(shape), generator=generator, device=generator.device)


def randint(high: int, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """``torch.randint`` from ``generator``, on its device."""
    return torch.randint(high, tuple(shape), generator=generator, device=generator.device)


def uniform(low: float, high: float, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Uniform in ``[low, high)`` from ``generator``, on its device."""
    return low + (high - low) * rand(shape, generator)


# ---------------------------------------------------------------- geometry
def crop_boxes(heights: torch.Tensor, widths: torch.Tensor, scale: Sequence[float], ratio: Sequence[float],
               generator: torch.Generator, tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop's boxes, ``(batch, 4)`` float as ``(top, left, height, width)``: an
    area fraction uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``, the first of
    ``tries`` draws that fits the image, else the central crop clamped to ``ratio``."""
    batch = heights.shape[0]
    heights, widths = heights.float()[:, None], widths.float()[:, None]
    area = heights * widths * uniform(scale[0], scale[1], (batch, tries), generator)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1]), (batch, tries), generator))
    crop_w = torch.sqrt(area * aspect).round()
    crop_h = torch.sqrt(area / aspect).round()
    fits = (crop_w > 0) & (crop_w <= widths) & (crop_h > 0) & (crop_h <= heights)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first fitting try (0 when none fits)
    crop_w, crop_h = crop_w.gather(1, first)[:, 0], crop_h.gather(1, first)[:, 0]
    heights, widths = heights[:, 0], widths[:, 0]
    top = (rand((batch,), generator) * (heights - crop_h + 1)).floor()
    left = (rand((batch,), generator) * (widths - crop_w + 1)).floor()
    # the fallback: the whole image, or its central part at the nearest allowed aspect ratio
    in_ratio = widths / heights
    low, high = min(ratio), max(ratio)
    center_w = torch.where(in_ratio > high, (heights * high).round(), widths)
    center_h = torch.where(in_ratio < low, (widths / low).round(), heights)
    any_fit = fits.any(dim=1)
    crop_h, crop_w = torch.where(any_fit, crop_h, center_h), torch.where(any_fit, crop_w, center_w)
    top = torch.where(any_fit, top, ((heights - center_h) / 2).floor())
    left = torch.where(any_fit, left, ((widths - center_w) / 2).floor())
    return torch.stack([top, left, crop_h, crop_w], dim=1)


def inverse_affine(linear_inverse: torch.Tensor, center: torch.Tensor, translate: torch.Tensor) -> torch.Tensor:
    """``(batch, 3, 3)``: the inverse of "move by ``-center``, apply a linear map, move by
    ``center + translate``", from the linear map's inverse ``(batch, 2, 2)``; coordinates are
    pixel centres relative to the image centre, y down."""
    matrix = torch.zeros(linear_inverse.shape[0], 3, 3, device=linear_inverse.device)
    matrix[:, :2, :2] = linear_inverse
    matrix[:, :2, 2] = center - (linear_inverse @ (center + translate)[..., None])[..., 0]
    matrix[:, 2, 2] = 1.0
    return matrix


def _rotation_shear_inverse(angle: torch.Tensor, shear_x: torch.Tensor, shear_y: torch.Tensor) -> torch.Tensor:
    """The inverse of the linear map rotating by ``angle`` degrees (counter-clockwise on screen
    for negative angles, as torchvision's affine) after shearing by the factors ``shear_x``
    (x += -shear_x * y) and ``shear_y`` (y += -shear_y * x, applied first)."""
    rot = torch.deg2rad(angle)
    cos, sin = torch.cos(rot), torch.sin(rot)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    rotation = torch.stack([cos, -sin, sin, cos], dim=-1).view(-1, 2, 2)
    shear = torch.stack([one, -shear_x, zero, one], dim=-1).view(-1, 2, 2)
    shear = shear @ torch.stack([one, zero, -shear_y, one], dim=-1).view(-1, 2, 2)
    linear = rotation @ shear  # determinant 1: the inverse is the adjugate
    a, b, c, d = linear[:, 0, 0], linear[:, 0, 1], linear[:, 1, 0], linear[:, 1, 1]
    return torch.stack([d, -b, -c, a], dim=-1).view(-1, 2, 2)


def affine_matrices(angle: torch.Tensor, shear_x: torch.Tensor, shear_y: torch.Tensor, translate: torch.Tensor,
                    corner: torch.Tensor, size: int) -> torch.Tensor:
    """Per sample, the inverse matrix of torchvision's affine op on a ``size`` image: rotation
    by ``angle`` degrees, shear factors, ``translate`` ``(batch, 2)`` pixels, about the image
    centre, or about the top-left corner where ``corner`` is true (the policies' shears)."""
    half = size / 2.0
    center = torch.where(corner[:, None], torch.full_like(translate, -half), torch.zeros_like(translate))
    return inverse_affine(_rotation_shear_inverse(angle, shear_x, shear_y), center, translate)


def crop_resize(images: list[torch.Tensor], boxes: list[list[int]], size: int, mode: str) -> torch.Tensor:
    """Each image's box ``(top, left, height, width)`` resized to ``size`` x ``size`` with
    ``mode`` ("nearest", "bilinear", "bicubic"; antialiased but for nearest): ``(batch, C,
    size, size)`` float, unrounded. One small resize per image, of the crop only."""
    antialias = mode != "nearest"
    crops = [F.interpolate(image[None, :, top:top + height, left:left + width].float(), size=(size, size),
                           mode=mode, antialias=antialias)
             for image, (top, left, height, width) in zip(images, boxes, strict=True)]
    return torch.cat(crops)


def _coverage(index: torch.Tensor, size: int) -> torch.Tensor:
    """How much of a bilinear sample at pixel ``index`` falls on the ``size`` pixels: 1 inside,
    0 a pixel or more outside, linear between."""
    return torch.minimum(index + 1, size - index).clamp_(0, 1)


def warp(images: torch.Tensor, matrices: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``images`` (float, square) resampled bilinearly at ``matrices`` (inverse, output pixel ->
    input pixel, centred coordinates) in one call for the batch; what falls outside takes the
    colour ``fill`` (``(C,)``), blended bilinearly at the edges."""
    batch, channels, size, _ = images.shape
    theta = matrices[:, :2, :].clone()
    theta[:, :, 2] /= size / 2  # to grid_sample's -1..1 coordinates
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    sampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    pixels = (grid + 1) * (size / 2) - 0.5
    covered = (_coverage(pixels[..., 0], size) * _coverage(pixels[..., 1], size))[:, None]
    return sampled.add_((1 - covered) * fill.view(1, -1, 1, 1))


# ------------------------------------------------------------------ colour
# Images are float (batch, 3, H, W) holding whole grey levels 0..255; each op returns the same,
# truncating as the per-image functions do when they convert back to uint8.
def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, ``(batch, 1, H, W)``, truncated to whole levels."""
    red, green, blue = images.unbind(1)
    return (red * 0.2989 + green * 0.587 + blue * 0.114).floor()[:, None]


def blend(images: torch.Tensor, other: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``images * f + other * (1 - f)`` per sample, clamped and truncated."""
    factors = _per_sample(factors)
    return (images * factors + other * (1 - factors)).clamp_(0, 255).floor_()


def adjust_brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return (images * _per_sample(factors)).clamp_(0, 255).floor_()


def adjust_saturation(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return blend(images, grayscale(images), factors)


def adjust_contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return blend(images, grayscale(images).mean(dim=(1, 2, 3), keepdim=True), factors)


def adjust_sharpness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with a 3x3 smoothing (1s around a 5, over 13) of the interior; borders stay."""
    channels = images.shape[1]
    kernel = torch.full((3, 3), 1 / 13, device=images.device)
    kernel[1, 1] = 5 / 13
    blurred = F.conv2d(images, kernel.expand(channels, 1, 3, 3), groups=channels).round_()
    interior = images[..., 1:-1, 1:-1]
    sharpened = images.clone()
    sharpened[..., 1:-1, 1:-1] = interior + (blurred - interior) * _per_sample(1 - factors)
    return sharpened.clamp_(0, 255).floor_()


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the ``bits`` high bits of each level (8: unchanged)."""
    step = _per_sample(torch.exp2(8 - bits))
    return (images / step).floor_() * step


def solarize(images: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Invert the levels at or above the per-sample threshold (above 255: unchanged)."""
    return torch.where(images >= _per_sample(thresholds), 255 - images, images)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """Stretch each channel's levels to 0..255 (constant channels stay)."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    flat = high == low
    scale = torch.where(flat, 1.0, (high - low) * (1.0 / 255))
    low = torch.where(flat, 0.0, low)
    return ((images - low) / scale).clamp_(0, 255).floor_()


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Histogram equalization per sample and channel (PIL's lookup table); channels with one
    level or nearly so stay."""
    batch, channels, height, width = images.shape
    planes = batch * channels
    levels = images.reshape(planes, -1).long()
    # scatter_add_, not bincount: bincount on CUDA reads the input's min and max on the host
    hist = torch.zeros(planes, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    cumulative = hist.cumsum(dim=1)
    last = cumulative.argmax(dim=1, keepdim=True)  # the highest level present
    step = (height * width - hist.gather(1, last)) // 255
    lut = (cumulative[:, :-1] + step // 2) // step.clamp(min=1)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut.clamp(0, 255)], dim=1)
    equalized = lut.gather(1, levels).to(images.dtype)
    return torch.where(step > 0, equalized, levels.to(images.dtype)).view_as(images)


def invert(images: torch.Tensor) -> torch.Tensor:
    return 255 - images


# ------------------------------------------------------- each op on its samples
def apply_subsets(images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor,
                  functions: dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]) -> torch.Tensor:
    """Apply ``functions[k](subset, index)`` in place to the samples labelled ``k``: ``labels``
    ``(batch,)`` on the host, ``order`` their stable argsort on the images' device (so each
    label's samples are a slice of it and nothing waits for the device)."""
    counts = torch.bincount(labels, minlength=max(functions, default=0) + 1).tolist()
    start = 0
    for label, count in enumerate(counts):
        if count and label in functions:
            index = order[start:start + count]
            images.index_copy_(0, index, functions[label](images.index_select(0, index), index))
        start += count
    return images


# ---------------------------------------------------------------- erasing
def erase_boxes(batch: int, size: int, scale: Sequence[float], ratio: Sequence[float], probability: float,
                generator: torch.Generator, tries: int = 10) -> torch.Tensor:
    """RandomErasing's boxes ``(batch, 4)`` (top, left, height, width; height 0 for no erasing):
    with ``probability``, the first of ``tries`` draws (area fraction uniform in ``scale``,
    log-uniform ``ratio``) smaller than the image."""
    erase = rand((batch,), generator) < probability
    area = size * size * uniform(scale[0], scale[1], (batch, tries), generator)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1]), (batch, tries), generator))
    heights, widths = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (heights < size) & (widths < size)
    first = fits.int().argmax(dim=1, keepdim=True)
    heights, widths = heights.gather(1, first)[:, 0], widths.gather(1, first)[:, 0]
    top = (rand((batch,), generator) * (size - heights + 1)).floor()
    left = (rand((batch,), generator) * (size - widths + 1)).floor()
    heights = torch.where(erase & fits.any(dim=1), heights, 0.0)
    return torch.stack([top, left, heights, widths], dim=1)


def erase(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Zero each sample's box."""
    size = images.shape[-1]
    top, left, heights, widths = (value.view(-1, 1, 1) for value in boxes.unbind(1))
    index = torch.arange(size, device=images.device)
    rows = (index.view(1, -1, 1) >= top) & (index.view(1, -1, 1) < top + heights)
    cols = (index.view(1, 1, -1) >= left) & (index.view(1, 1, -1) < left + widths)
    return images.masked_fill_((rows & cols)[:, None], 0.0)

