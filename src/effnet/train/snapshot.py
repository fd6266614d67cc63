"""A copy of the training state kept on the device, to step back over updates found bad late.

The trainer reads the device (non-finite losses, stop signals) only once every few updates,
so that the host never waits for the device in between. When a read finds a non-finite loss,
updates made since the previous read may already hold it; :class:`TrainingSnapshot` holds the
state as it was after the previous read's update (model, optimizer, EMA, schedule and grad
scaler) and puts it back. Taking one copies tensors on the device into buffers kept from one
snapshot to the next, without reading them on the host; an fp16 grad scaler's scale and growth
tracker are copied the same way (its ``state_dict`` would read them, and with the fused AdamW
and SGD steps fp16 training reads the device nowhere else). The copies take as much device
memory again as the model, its EMA and the optimizer state.
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


def _copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """``copy_`` pairwise, as one multi-tensor copy per device and dtype: ``_foreach_copy_`` copies
    a list that mixes dtypes (floating parameters, BatchNorm's integer counters) one by one."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for target, source in zip(targets, sources, strict=True):
        into, out_of = groups.setdefault((target.device, target.dtype), ([], []))
        into.append(target)
        out_of.append(source)
    for into, out_of in groups.values():
        torch._foreach_copy_(into, out_of)


class TrainingSnapshot:
    """The model, optimizer, EMA, schedule and scaler states at the last :meth:`take`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                 ema: ModelEMA | None, scaler: torch.amp.GradScaler) -> None:
        self.model, self.optimizer, self.schedule, self.ema, self.scaler = model, optimizer, schedule, ema, scaler
        self._copies: list[torch.Tensor] = []
        self._counts = (0, 0)  # module tensors, scaler tensors: the copies then hold the optimizer's
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

    def _scaler_tensors(self) -> list[torch.Tensor]:
        """An enabled scaler's scale and growth tracker, once its first ``scale`` made them."""
        if not self.scaler.is_enabled() or self.scaler._scale is None or self.scaler._growth_tracker is None:
            return []
        return [self.scaler._scale, self.scaler._growth_tracker]

    def take(self) -> None:
        """Copy the current state (device to device, no host sync)."""
        layout, optimizer_tensors, values = self._optimizer_state()
        modules, scaler = self._module_tensors(), self._scaler_tensors()
        counts = (len(modules), len(scaler))
        tensors = modules + scaler + optimizer_tensors
        if layout != self._layout or counts != self._counts:  # the optimizer or scaler state appeared
            self._copies = [t.clone() for t in tensors]
        else:
            _copy(self._copies, tensors)
        self._counts, self._layout, self._values = counts, layout, copy.deepcopy(values)
        self._python = {"schedule": self.schedule.state_dict(),
                        "ema_updates": self.ema.updates if self.ema is not None else 0,
                        # before its first scale() the scaler's state is its initial values: no read
                        "scaler": self.scaler.state_dict() if self.scaler.is_enabled() and not scaler else None}

    def restore(self) -> None:
        """Put the state of the last :meth:`take` back."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        modules, scaler = self._counts
        self.optimizer.state.clear()
        for index, values in self._values.items():
            self.optimizer.state[params[index]] = dict(values)
        for (index, key), saved in zip(self._layout, self._copies[modules + scaler:], strict=True):
            self.optimizer.state[params[index]][key] = saved.clone()
        _copy(self._module_tensors() + (self._scaler_tensors() if scaler else []), self._copies[:modules + scaler])
        self.schedule.load_state_dict(self._python["schedule"])
        if self.ema is not None:
            self.ema.updates = self._python["ema_updates"]
        if self._python["scaler"] is not None:
            self.scaler.load_state_dict(self._python["scaler"])
