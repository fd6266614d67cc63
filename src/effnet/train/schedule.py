"""Learning-rate schedules, stepped once per optimizer update.

Both start with a linear warm-up from ``warmup_lr_ratio * lr`` to ``lr``. Then ``cosine``
decays to ``min_lr_ratio * lr`` at the end of the run, and ``step`` is the EfficientNet
reference's staircase: ``lr * decay_rate ** floor(epoch / decay_epochs)`` (x0.97 every 2.4
epochs), counted from the start of the run as in the reference.

A param group with an ``lr_scale`` (discriminative fine-tuning rates, see
:func:`effnet.train.finetune.layer_decay_groups`) gets the scheduled rate times that scale.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .config import ScheduleSettings


class LRSchedule:
    """Sets every param group's ``lr`` from the position in the run (fractional epochs), times
    the group's ``lr_scale`` (1 when it has none)."""

    def __init__(self, optimizer: torch.optim.Optimizer, settings: ScheduleSettings, base_lr: float,
                 epochs: int, steps_per_epoch: int) -> None:
        if steps_per_epoch <= 0:
            raise ConfigError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.optimizer = optimizer
        self.settings = settings
        self.base_lr = base_lr
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.step_count = 0
        self._apply()

    def lr_at(self, epoch: float) -> float:
        """The learning rate at a (fractional) epoch of the run."""
        s = self.settings
        if epoch < s.warmup_epochs:
            ratio = s.warmup_lr_ratio + (1.0 - s.warmup_lr_ratio) * epoch / s.warmup_epochs
            return self.base_lr * ratio
        if s.name == "step":
            return self.base_lr * s.decay_rate ** math.floor(epoch / s.decay_epochs)
        progress = min(1.0, (epoch - s.warmup_epochs) / max(self.epochs - s.warmup_epochs, 1e-12))
        floor = s.min_lr_ratio * self.base_lr
        return floor + (self.base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    @property
    def lr(self) -> float:
        return self.lr_at(self.step_count / self.steps_per_epoch)

    def step(self) -> None:
        """Advance one optimizer update."""
        self.step_count += 1
        self._apply()

    def _apply(self) -> None:
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        if state["steps_per_epoch"] != self.steps_per_epoch:
            # Batch size or data changed: keep the position in epochs, not in steps.
            epoch = state["step_count"] / state["steps_per_epoch"]
            self.step_count = round(epoch * self.steps_per_epoch)
        else:
            self.step_count = state["step_count"]
        self._apply()
