"""A copy of the training state kept on the device, to step back over updates found bad late.

The trainer reads the device (non-finite losses, stop signals) only once every few updates,
so that the host never waits for the device in between. When a read finds a non-finite loss,
updates made since the previous read may already hold it; :class:`TrainingSnapshot` holds the
state as it was at that read (model, optimizer, EMA, schedule and grad scaler) and puts it
back. Taking one copies tensors on the device (``copy_`` without a host sync) into buffers
kept from one snapshot to the next; only an fp16 grad scaler's state is read on the host (fp16
training reads the device at every update anyway, in ``GradScaler.step``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .ema import ModelEMA
from .schedule import LRSchedule


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [t.detach() for t in (*module.parameters(), *module.buffers())]


class TrainingSnapshot:
    """The model, optimizer, EMA, schedule and scaler states at the last :meth:`take`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                 ema: ModelEMA | None, scaler: torch.amp.GradScaler) -> None:
        self.model, self.optimizer, self.schedule, self.ema, self.scaler = model, optimizer, schedule, ema, scaler
        self._copies: list[torch.Tensor] = []
        self._layout: list[tuple[int, str]] = []
        self._values: dict[int, dict[str, Any]] = {}
        self._python: dict[str, Any] = {}

    def _optimizer_state(self) -> tuple[list[tuple[int, str]], list[torch.Tensor], dict[int, dict[str, Any]]]:
        """(param index, key) of each tensor of the optimizer state, the tensors, and the other values."""
        layout, tensors, values = [], [], {}
        for index, param in enumerate(p for group in self.optimizer.param_groups for p in group["params"]):
            state = self.optimizer.state.get(param)
            if not state:
                continue
            values[index] = {}
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    layout.append((index, key))
                    tensors.append(value)
                else:
                    values[index][key] = value
        return layout, tensors, values

    def _module_tensors(self) -> list[torch.Tensor]:
        return _tensors(self.model) + (_tensors(self.ema.module) if self.ema is not None else [])

    def take(self) -> None:
        """Copy the current state (device to device, no host sync)."""
        layout, optimizer_tensors, values = self._optimizer_state()
        tensors = self._module_tensors() + optimizer_tensors
        if layout != self._layout or len(tensors) != len(self._copies):  # the optimizer state appeared
            self._copies = [t.clone() for t in tensors]
        else:
            torch._foreach_copy_(self._copies, tensors, non_blocking=True)
        self._layout, self._values = layout, copy.deepcopy(values)
        self._python = {"schedule": self.schedule.state_dict(),
                        "ema_updates": self.ema.updates if self.ema is not None else 0,
                        "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}

    def restore(self) -> None:
        """Put the state of the last :meth:`take` back."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        kept = len(self._copies) - len(self._layout)
        self.optimizer.state.clear()
        for index, values in self._values.items():
            self.optimizer.state[params[index]] = dict(values)
        for (index, key), saved in zip(self._layout, self._copies[kept:], strict=True):
            self.optimizer.state[params[index]][key] = saved.clone()
        torch._foreach_copy_(self._module_tensors(), self._copies[:kept])
        self.schedule.load_state_dict(self._python["schedule"])
        if self.ema is not None:
            self.ema.updates = self._python["ema_updates"]
        if self._python["scaler"] is not None:
            self.scaler.load_state_dict(self._python["scaler"])
