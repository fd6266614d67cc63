"""Progressive resizing: what image size and regularization each epoch trains with.

``linear`` (the seed trainer's): the size grows from ``start_size`` to the final size, a step
every epoch, reaching the final size on the last epoch. ``staged`` (EfficientNetV2,
progressive learning): the run is split into equal stages; in stage ``i`` of ``M`` the size,
RandAugment magnitude, head dropout rate and mixup alpha are each ``first + (last - first) *
i / (M - 1)``, so regularization grows with the image size. A ``start_size`` above the final size is
clamped to it (no resizing).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import AugmentSettings, ProgressiveSettings


@dataclass(frozen=True)
class EpochSettings:
    """The image size and regularization of one epoch (``drop_rate``: the head's dropout rate)."""

    resolution: int
    ra_magnitude: int
    mixup_alpha: float
    drop_rate: float


class ProgressivePlan:
    """Per-epoch :class:`EpochSettings` for a run of ``epochs`` epochs ending at ``resolution``
    (``data.img_size``); ``drop_rate`` is the model's own rate, which only staged learning changes."""

    def __init__(self, settings: ProgressiveSettings, augment: AugmentSettings, resolution: int,
                 epochs: int, drop_rate: float) -> None:
        self.settings = settings
        self.augment = augment
        self.drop_rate = drop_rate
        self.resolution = resolution
        self.epochs = epochs
        self.start_size = min(settings.start_size, resolution)

    def _round(self, size: float) -> int:
        step = self.settings.size_step
        return min(self.resolution, max(step, int(size / step + 0.5) * step))

    def smallest_size(self) -> int:
        """The smallest training image size of the run."""
        return min(self.at(epoch).resolution for epoch in range(self.epochs))

    def at(self, epoch: int) -> EpochSettings:
        s, a = self.settings, self.augment
        if s.mode == "none":
            return EpochSettings(self.resolution, a.ra_magnitude, a.mixup_alpha, self.drop_rate)
        if s.mode == "linear":
            fraction = epoch / (self.epochs - 1) if self.epochs > 1 else 1.0
            size = self.resolution if fraction >= 1.0 else \
                self._round(self.start_size + (self.resolution - self.start_size) * fraction)
            return EpochSettings(size, a.ra_magnitude, a.mixup_alpha, self.drop_rate)
        stages = min(s.stages, self.epochs)
        stage = min(stages - 1, epoch * stages // self.epochs)
        fraction = stage / (stages - 1) if stages > 1 else 1.0

        def grow(bounds: tuple[float, float]) -> float:
            return bounds[0] + (bounds[1] - bounds[0]) * fraction

        size = self.resolution if fraction >= 1.0 else self._round(grow((self.start_size, self.resolution)))
        return EpochSettings(size, int(round(grow(s.ra_magnitude))), grow(s.mixup_alpha), grow(s.drop_rate))
