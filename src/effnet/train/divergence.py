"""A run whose loss or weights become NaN or infinite stops, and saves nothing of them.

The trainer reads the device (loss finite? stop signal?) once every ``run.check_every``
updates and at each epoch's end. A non-finite loss stops the run at the read that finds it,
before that read's update and before anything is saved, leaving the last good checkpoint as
it was. With ``check_every`` 1 the bad update is never applied (the BatchNorm statistics have
seen its forward). Above 1 the updates since the previous read were applied, the bad one
possibly among them, so the trainer's model, optimizer, EMA, schedule and scaler are put back
as they were after the previous read's update (:class:`~effnet.train.snapshot.TrainingSnapshot`,
a copy kept on the device): up to ``check_every - 1`` good updates are undone in memory (on
disk, everything since the last checkpoint is lost either way).

:func:`raise_loss_diverged` says where it happened, what was kept and what to change;
:func:`check_finite_weights` refuses to save weights that became non-finite (a BatchNorm
statistic can blow up while the loss stays finite). Both raise :class:`TrainingDiverged`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NoReturn

import torch
from torch import nn

from ..errors import EffnetError
from ..weights.trained import LAST
from .reporting import LOG


class TrainingDiverged(EffnetError, ValueError):
    """The loss became NaN or infinite; the run stopped without saving the bad weights.

    A ``ValueError`` so that the command line reports it as a settings problem.
    """


def raise_loss_diverged(run_dir: Path, epoch: int, step: int, loss: torch.Tensor, checked: int, lr: float,
                        check_every: int, rolled_back: bool) -> NoReturn:
    """Report a non-finite loss at batch ``step``, trained at ``lr``; the weights are those
    before batch ``checked`` (``rolled_back``: put back to them, the device being read every
    ``check_every`` updates)."""
    last = run_dir / LAST
    kept, then = ((f"the last good checkpoint {last} is kept", f"resume with --resume {run_dir} or start "
                   "again") if last.exists() else ("no checkpoint had been written yet", "start again"))
    value = loss.item()
    what = f"{value}" if not math.isfinite(value) else "non-finite in another process"
    lost = (f" with the state it had before batch {checked + 1}, at the last check (the device is read every "
            f"run.check_every={check_every} updates: up to {check_every - 1} good updates are lost)"
            if rolled_back else "")
    message = (f"the loss became {what} at epoch {epoch + 1}, batch {step + 1} (lr {lr:.4g}); "
               f"the run stopped{lost} and {kept}. Lower the learning rate (--set optimizer.lr=...), clip "
               f"gradients (--set run.clip_grad=1.0) or use full precision (--set run.amp=null), then {then}.")
    LOG.error(message)
    raise TrainingDiverged(message)


def check_finite_weights(model: nn.Module, epoch: int, run_dir: Path) -> None:
    """Raise :class:`TrainingDiverged` when a floating-point weight or buffer of ``model`` is not finite."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            message = (f"weight {name} became non-finite in epoch {epoch + 1}; nothing was saved and the last "
                       f"good checkpoint in {run_dir} is kept. Lower the learning rate or clip gradients "
                       "(--set run.clip_grad=1.0).")
            LOG.error(message)
            raise TrainingDiverged(message)
