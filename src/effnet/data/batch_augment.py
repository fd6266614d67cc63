"""The training and evaluation presets on a whole batch on the device, with per-sample randomness.

:func:`batch_preset` reads a preset built by :mod:`effnet.data.transforms` (its settings are
the one source of truth) and returns its batched form: a callable taking a list of uint8 CHW
images of any sizes (decoded on the device) and a CPU :class:`torch.Generator`, returning the
normalized float32 batch in ``channels_last``. The training form draws the v2 preset's
distributions per sample on the host (a few numbers per image, shipped in one asynchronous
copy) and runs each step as batch-wide tensor operations:

- the random resized crop: each image's crop resized with the preset's interpolation
  (antialiased), the one per-image step; everything after is batched;
- the horizontal flip, then the random rotation/shear and the auto-augment policies' shear,
  translate and rotate ops composed into one matrix per sample and applied in one
  ``grid_sample`` to the samples that drew any (fill colour where nothing maps, blended
  bilinearly at the edges);
- ColorJitter (per-sample factors and order), then the policies' colour ops in the order
  drawn, each on the samples that drew it, with the uint8 rounding of the per-image
  functions. Since the policies' geometric ops moved before them, pixels filled by a
  geometric op also pass through colour ops drawn before it, and whole-image statistics
  (contrast mean, autocontrast, equalize) see the image after all geometric ops;
- normalization and RandomErasing.

The policy tables (ops, magnitude ranges, signs) follow RandAugment, TrivialAugmentWide and
the ImageNet AutoAugment policy as torchvision defines them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

BatchPreset = Callable[[list[torch.Tensor], torch.Generator], torch.Tensor]

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
            chosen = pairs[_randint(len(IMAGENET_POLICY), (batch,), generator)]  # (batch, 2, 3)
            ops = chosen[..., 0].long()
            ops = torch.where(_rand(shape, generator) <= chosen[..., 1], ops, torch.full_like(ops, IDENTITY))
            bins = chosen[..., 2].long()
        else:
            ops = torch.tensor(WIDE_OPS, device=device)[_randint(len(WIDE_OPS), shape, generator)]
            bins = (_randint(self.bins, shape, generator) if self.kind == "trivialaugment"
                    else torch.full(shape, self.magnitude, device=device))
        magnitudes = table[ops, bins]
        signed = torch.isin(ops, torch.tensor(SIGNED_OPS, device=device))
        flip = signed & (_rand(shape, generator) <= 0.5)
        magnitudes = torch.where(flip, -magnitudes, magnitudes)
        translate = (ops == TRANSLATE_X) | (ops == TRANSLATE_Y)
        return ops, torch.where(translate, magnitudes.trunc(), magnitudes)  # whole pixels, as the policies shift


def _rand(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator, device=generator.device)


def _randint(high: int, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return torch.randint(high, tuple(shape), generator=generator, device=generator.device)


def _uniform(low: float, high: float, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * _rand(shape, generator)


# ---------------------------------------------------------------- geometry
def crop_boxes(heights: torch.Tensor, widths: torch.Tensor, scale: Sequence[float], ratio: Sequence[float],
               generator: torch.Generator, tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop's boxes, ``(batch, 4)`` float as ``(top, left, height, width)``: an
    area fraction uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``, the first of
    ``tries`` draws that fits the image, else the central crop clamped to ``ratio``."""
    batch = heights.shape[0]
    heights, widths = heights.float()[:, None], widths.float()[:, None]
    area = heights * widths * _uniform(scale[0], scale[1], (batch, tries), generator)
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), (batch, tries), generator))
    crop_w = torch.sqrt(area * aspect).round()
    crop_h = torch.sqrt(area / aspect).round()
    fits = (crop_w > 0) & (crop_w <= widths) & (crop_h > 0) & (crop_h <= heights)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first fitting try (0 when none fits)
    crop_w, crop_h = crop_w.gather(1, first)[:, 0], crop_h.gather(1, first)[:, 0]
    heights, widths = heights[:, 0], widths[:, 0]
    top = (_rand((batch,), generator) * (heights - crop_h + 1)).floor()
    left = (_rand((batch,), generator) * (widths - crop_w + 1)).floor()
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


def _policy_functions(magnitudes: torch.Tensor) -> dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
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


# ------------------------------------------------------------------ presets
def erase_boxes(batch: int, size: int, scale: Sequence[float], ratio: Sequence[float], probability: float,
                generator: torch.Generator, tries: int = 10) -> torch.Tensor:
    """RandomErasing's boxes ``(batch, 4)`` (top, left, height, width; height 0 for no erasing):
    with ``probability``, the first of ``tries`` draws (area fraction uniform in ``scale``,
    log-uniform ``ratio``) smaller than the image."""
    erase = _rand((batch,), generator) < probability
    area = size * size * _uniform(scale[0], scale[1], (batch, tries), generator)
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), (batch, tries), generator))
    heights, widths = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (heights < size) & (widths < size)
    first = fits.int().argmax(dim=1, keepdim=True)
    heights, widths = heights.gather(1, first)[:, 0], widths.gather(1, first)[:, 0]
    top = (_rand((batch,), generator) * (size - heights + 1)).floor()
    left = (_rand((batch,), generator) * (size - widths + 1)).floor()
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


def normalization(mean: Sequence[float], std: Sequence[float]) -> dict[str, torch.Tensor]:
    """``scale`` and ``shift`` (host tensors) taking levels 0..255 to ``(x / 255 - mean) / std``."""
    scale = 1 / (255 * torch.tensor(std).view(1, -1, 1, 1))
    return {"scale": scale, "shift": -torch.tensor(mean).view(1, -1, 1, 1) * scale * 255}


def _normalize(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``images * scale + shift`` in one pass, into a channels_last batch."""
    out = torch.empty_like(images, dtype=torch.float32, memory_format=torch.channels_last)
    return torch.addcmul(shift, images, scale, out=out)


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without waiting for the work queued there: on CUDA from
    pinned memory, asynchronously (a plain copy to CUDA waits for everything queued before it)."""
    if device.type == "cuda" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _to_device(host: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``host``'s tensors (float, bool or integers below 2**24) on ``device`` in one
    :func:`host_to_device` copy."""
    packed = host_to_device(torch.cat([tensor.reshape(-1).float() for tensor in host.values()]), device)
    shipped, start = {}, 0
    for name, tensor in host.items():
        piece = packed[start:start + tensor.numel()].view(tensor.shape)
        shipped[name] = piece if tensor.is_floating_point() else piece.to(tensor.dtype)
        start += tensor.numel()
    return shipped


@dataclass(frozen=True)
class BatchTrainPreset:
    """The training preset of :func:`effnet.data.transforms.train_transforms` on a batch.

    Every random parameter is drawn on the host from the CPU ``generator`` given to the call
    (a few numbers per image) and reaches the device in one asynchronous copy, so the host
    knows which samples drew which op: each op runs on its samples only, and nothing waits
    for the device."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mode: str = "bilinear"
    fill: tuple[float, ...] = (0.0, 0.0, 0.0)
    degrees: float = 0.0
    shear: float = 0.0
    hflip: float = 0.0
    brightness: tuple[float, float] | None = None
    contrast: tuple[float, float] | None = None
    saturation: tuple[float, float] | None = None
    policy: Policy | None = None
    erase_prob: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    def draw(self, heights: torch.Tensor, widths: torch.Tensor,
             generator: torch.Generator) -> tuple[list[list[int]], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """A batch's random parameters: the crop boxes, the labels saying which samples take
        which op (``flip``, ``warp``: 0/1; ``jitter``: the order of brightness, contrast and
        saturation as a base-3 number; ``policy<t>``: the op drawn at step t), and the
        per-sample values the device needs."""
        batch = heights.shape[0]
        boxes = crop_boxes(heights, widths, self.scale, self.ratio, generator).long().tolist()
        labels: dict[str, torch.Tensor] = {}
        values: dict[str, torch.Tensor] = {}
        flip = _rand((batch,), generator) < self.hflip if self.hflip > 0 else torch.zeros(batch, dtype=torch.bool)
        labels["flip"] = flip.long()
        # The flip runs first, on the crop: with angles and shears drawn from ranges symmetric
        # about 0, flipping before or after them gives the same distribution.
        matrix = torch.eye(3).repeat(batch, 1, 1)
        if self.degrees > 0 or self.shear > 0:
            angle = _uniform(-self.degrees, self.degrees, (batch,), generator)
            shear = torch.tan(torch.deg2rad(_uniform(-self.shear, self.shear, (batch,), generator)))
            matrix = affine_matrices(angle, shear, torch.zeros(batch), torch.zeros(batch, 2),
                                     torch.zeros(batch, dtype=torch.bool), self.size)
        if self.brightness or self.contrast or self.saturation:
            ranges = (self.brightness, self.contrast, self.saturation)
            values["jitter"] = torch.stack([_uniform(r[0], r[1], (batch,), generator) if r else torch.ones(batch)
                                            for r in ranges], dim=1)
            order = _rand((batch, 3), generator).argsort(dim=1)
            labels["jitter"] = order[:, 0] * 9 + order[:, 1] * 3 + order[:, 2]  # the order, as a base-3 number
        if self.policy is not None:
            ops, magnitudes = self.policy.draw(batch, self.size, generator)
            for step in range(ops.shape[1]):
                matrix = matrix @ policy_matrices(ops[:, step], magnitudes[:, step], self.size)
                labels[f"policy{step}"] = ops[:, step]
            values["magnitudes"] = magnitudes
        labels["warp"] = ((matrix - torch.eye(3)).abs().amax(dim=(1, 2)) > 1e-6).long()
        values["matrix"] = matrix
        if self.erase_prob > 0:
            values["erase"] = erase_boxes(batch, self.size, self.erase_scale, self.erase_ratio, self.erase_prob,
                                          generator)
        return boxes, labels, values

    def _jitter(self, factors: torch.Tensor) -> dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """ColorJitter for each order of its ops (keyed as :meth:`draw` labels them), with the
        samples' ``factors`` ``(batch, 3)``; disabled ops are left out."""
        functions = (adjust_brightness, adjust_contrast, adjust_saturation)
        enabled = [r is not None for r in (self.brightness, self.contrast, self.saturation)]

        def in_order(order: tuple[int, ...]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
            def run(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
                for op in order:
                    if enabled[op]:
                        images = functions[op](images, factors[index, op])
                return images
            return run

        return {a * 9 + b * 3 + c: in_order((a, b, c)) for a, b, c in itertools.permutations(range(3))}

    def __call__(self, images: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        device = images[0].device
        heights = torch.tensor([image.shape[1] for image in images])
        widths = torch.tensor([image.shape[2] for image in images])
        boxes, labels, values = self.draw(heights, widths, generator)
        orders = {f"order_{name}": torch.argsort(label, stable=True) for name, label in labels.items()}
        constants = {"fill": torch.tensor(self.fill), **normalization(self.mean, self.std)}
        shipped = _to_device({**values, **orders, **constants}, device)
        fill = shipped["fill"]
        matrix = shipped["matrix"]

        def apply(images: torch.Tensor, name: str, functions: dict) -> torch.Tensor:
            return apply_subsets(images, labels[name], shipped[f"order_{name}"], functions)

        out = crop_resize(images, boxes, self.size, self.mode).round_().clamp_(0, 255)
        out = apply(out, "flip", {1: lambda x, i: x.flip(-1)})
        out = apply(out, "warp", {1: lambda x, i: warp(x, matrix[i], fill).round_()})
        if "jitter" in shipped:
            out = apply(out, "jitter", self._jitter(shipped["jitter"]))
        for step in range(self.policy.steps if self.policy is not None else 0):
            out = apply(out, f"policy{step}", _policy_functions(shipped["magnitudes"][:, step]))
        out = _normalize(out, shipped["scale"], shipped["shift"])
        return erase(out, shipped["erase"]) if "erase" in shipped else out


@dataclass(frozen=True)
class BatchEvalPreset:
    """The evaluation preset: each image resized and centre-cropped by ``resize_crop`` (the v2
    steps, per image), then converted and normalized as one batch."""

    resize_crop: Callable[[torch.Tensor], torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        constants = _to_device(normalization(self.mean, self.std), images[0].device)
        return _normalize(torch.stack([self.resize_crop(image) for image in images]), **constants)


def _fill(transform: v2.Transform) -> tuple[float, ...]:
    fill = 0 if transform.fill is None else transform.fill
    values = [fill] * 3 if isinstance(fill, (int, float)) else list(fill)
    return tuple(float(v) for v in values)


def _bilinear(transform: v2.Transform) -> bool:
    return str(getattr(transform.interpolation, "value", transform.interpolation)) == "bilinear"


def _policy(transform: v2.Transform) -> Policy | None:
    if isinstance(transform, v2.RandAugment):
        return Policy("randaugment", transform.num_ops, transform.magnitude, transform.num_magnitude_bins)
    if isinstance(transform, v2.TrivialAugmentWide):
        return Policy("trivialaugment", 1, 0, transform.num_magnitude_bins)
    if isinstance(transform, v2.AutoAugment) and transform.policy == v2.AutoAugmentPolicy.IMAGENET:
        return Policy("autoaugment", 2)
    return None


def batch_preset(transform: Callable) -> BatchPreset | None:
    """The batched form of a preset from :mod:`effnet.data.transforms` (a v2 ``Compose``), or
    ``None`` when it holds a step this module does not batch (the caller then applies the
    preset image by image)."""
    steps = list(getattr(transform, "transforms", []))
    kinds = [type(step) for step in steps]
    normalize = next((s for s in steps if isinstance(s, v2.Normalize)), None)
    if normalize is None:
        return None
    mean, std = tuple(normalize.mean), tuple(normalize.std)
    if kinds[:2] == [v2.Resize, v2.CenterCrop]:
        rest = [v2.ToImage, v2.ToDtype, v2.Normalize, v2.ToPureTensor]
        return BatchEvalPreset(v2.Compose(steps[:2]), mean, std) if kinds[2:] == rest else None
    if not steps or not isinstance(steps[0], v2.RandomResizedCrop):
        return None
    crop = steps[0]
    mode = str(getattr(crop.interpolation, "value", crop.interpolation))
    if mode not in ("nearest", "bilinear", "bicubic"):
        return None
    if len(set(crop.size)) != 1 or any(isinstance(step, v2.ToDtype) and not step.scale for step in steps):
        return None
    settings: dict = {"size": crop.size[0], "scale": tuple(crop.scale), "ratio": tuple(crop.ratio),
                      "mean": mean, "std": std, "mode": mode}
    for step in steps[1:]:
        if isinstance(step, v2.RandomAffine):
            if step.translate is not None or step.scale is not None or step.center is not None \
                    or step.shear is not None and len(step.shear) != 2 or not _bilinear(step):
                return None
            settings.update(degrees=float(step.degrees[1]), fill=_fill(step),
                            shear=float(step.shear[1]) if step.shear is not None else 0.0)
        elif isinstance(step, v2.RandomHorizontalFlip):
            settings["hflip"] = float(step.p)
        elif isinstance(step, v2.ColorJitter):
            if step.hue is not None:
                return None
            settings.update(brightness=step.brightness, contrast=step.contrast, saturation=step.saturation)
        elif isinstance(step, (v2.RandAugment, v2.TrivialAugmentWide, v2.AutoAugment)):
            policy = _policy(step)
            if policy is None or not _bilinear(step):
                return None
            settings.update(policy=policy, fill=_fill(step))
        elif isinstance(step, v2.RandomErasing):
            if step.value is None or [float(v) for v in step.value] != [0.0]:
                return None
            settings.update(erase_prob=float(step.p), erase_scale=tuple(step.scale), erase_ratio=tuple(step.ratio))
        elif not isinstance(step, (v2.ToImage, v2.ToDtype, v2.Normalize, v2.ToPureTensor)):
            return None
    return BatchTrainPreset(**settings)
