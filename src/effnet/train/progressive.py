"""Progressive resizing: what image size and regularization each epoch trains with.

``linear`` (the seed trainer's): the size grows from ``start_size`` to the final size, a step
every epoch, reaching the final size on the last epoch. ``staged`` (EfficientNetV2,
progressive learning): the run is split into equal stages; in stage ``i`` of ``M`` the size,
RandAugment magnitude, head dropout and mixup alpha are each ``first + (last - first) *
i / (M - 1)``, so regularization grows with the image size. A ``start_size`` above the final size is
clamped to it (no resizing).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import AugmentSettings, ProgressiveSettings


@dataclass(frozen=True)
class EpochSettings:
    """The image size and regularization of one epoch (``dropout``: the head's dropout rate)."""

    img_size: int
    ra_magnitude: int
    mixup_alpha: float
    dropout: float


class ProgressivePlan:
    """Per-epoch :class:`EpochSettings` for a run of ``epochs`` epochs ending at ``final_size``;
    ``dropout`` is the model's own rate, which only staged learning changes."""

    def __init__(self, settings: ProgressiveSettings, augment: AugmentSettings, final_size: int,
                 epochs: int, dropout: float) -> None:
        self.settings = settings
        self.augment = augment
        self.dropout = dropout
        self.final_size = final_size
        self.epochs = epochs
        self.start_size = min(settings.start_size, final_size)

    def _round(self, size: float) -> int:
        step = self.settings.size_step
        return min(self.final_size, max(step, int(size / step + 0.5) * step))

    def smallest_size(self) -> int:
        """The smallest training image size of the run."""
        return min(self.at(epoch).img_size for epoch in range(self.epochs))

    def at(self, epoch: int) -> EpochSettings:
        s, a = self.settings, self.augment
        if s.mode == "none":
            return EpochSettings(self.final_size, a.ra_magnitude, a.mixup_alpha, self.dropout)
        if s.mode == "linear":
            fraction = epoch / (self.epochs - 1) if self.epochs > 1 else 1.0
            size = self.final_size if fraction >= 1.0 else \
                self._round(self.start_size + (self.final_size - self.start_size) * fraction)
            return EpochSettings(size, a.ra_magnitude, a.mixup_alpha, self.dropout)
        stages = min(s.stages, self.epochs)
        stage = min(stages - 1, epoch * stages // self.epochs)
        fraction = stage / (stages - 1) if stages > 1 else 1.0

        def grow(bounds: tuple[float, float]) -> float:
            return bounds[0] + (bounds[1] - bounds[0]) * fraction

        size = self.final_size if fraction >= 1.0 else self._round(grow((self.start_size, self.final_size)))
        return EpochSettings(size, int(round(grow(s.ra_magnitude))), grow(s.mixup_alpha), grow(s.dropout))
