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

The ops themselves are in :mod:`effnet.data.batch_ops`, the auto-augment policies (RandAugment,
TrivialAugmentWide, ImageNet AutoAugment, with torchvision's tables) in
:mod:`effnet.data.batch_policies`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from .batch_ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    affine_matrices,
    apply_subsets,
    crop_boxes,
    crop_resize,
    erase,
    erase_boxes,
    rand,
    uniform,
    warp,
)
from .batch_policies import Policy, policy_colour_ops, policy_matrices

BatchPreset = Callable[[list[torch.Tensor], torch.Generator], torch.Tensor]


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
        flip = rand((batch,), generator) < self.hflip if self.hflip > 0 else torch.zeros(batch, dtype=torch.bool)
        labels["flip"] = flip.long()
        # The flip runs first, on the crop: with angles and shears drawn from ranges symmetric
        # about 0, flipping before or after them gives the same distribution.
        matrix = torch.eye(3).repeat(batch, 1, 1)
        if self.degrees > 0 or self.shear > 0:
            angle = uniform(-self.degrees, self.degrees, (batch,), generator)
            shear = torch.tan(torch.deg2rad(uniform(-self.shear, self.shear, (batch,), generator)))
            matrix = affine_matrices(angle, shear, torch.zeros(batch), torch.zeros(batch, 2),
                                     torch.zeros(batch, dtype=torch.bool), self.size)
        if self.brightness or self.contrast or self.saturation:
            ranges = (self.brightness, self.contrast, self.saturation)
            values["jitter"] = torch.stack([uniform(r[0], r[1], (batch,), generator) if r else torch.ones(batch)
                                            for r in ranges], dim=1)
            order = rand((batch, 3), generator).argsort(dim=1)
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
            out = apply(out, f"policy{step}", policy_colour_ops(shipped["magnitudes"][:, step]))
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
    if len(kinds) > 1 and issubclass(kinds[0], v2.Resize) and kinds[1] is v2.CenterCrop:
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
