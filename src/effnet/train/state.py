"""Where a run stands, and the batches of one epoch.

:class:`RunState` is everything besides the model, optimizer, schedule, scaler and EMA states
that a resume needs: the epoch in progress and how far into it, the running sums of that
epoch, the history, the best epoch and the RNG states that replay an interrupted epoch. It is
the one place the trainer keeps them, and it round-trips through a checkpoint dict. Each
finished epoch is recorded there (:meth:`RunState.record_epoch`), which decides the best.

:func:`epoch_batches` yields an epoch's batches from a given step on (an interrupted epoch
replays its data order and skips what was trained), each marked with its accumulation group
and whether it ends an optimizer update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader


@dataclass
class EpochSums:
    """Running totals of the epoch in progress."""

    loss: float = 0.0
    images: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "images": self.images, "seconds": self.seconds}


@dataclass
class RunState:
    """The position of a run and what it has measured so far.

    ``epoch``: the epoch in progress, or the next one to start (0-based); ``step_in_epoch``:
    batches of it already trained. ``epoch_rng``: each process's RNG state at the start of
    ``epoch`` (replays its data order); ``resume_rng``: this process's RNG state at the
    interruption, restored once the replay has skipped the trained batches.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    sums: EpochSums = field(default_factory=EpochSums)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"top1": None, "epoch": None, "weights": None})
    epoch_rng: list[dict[str, Any]] | None = None
    resume_rng: dict[str, Any] | None = None

    @property
    def mid_epoch(self) -> bool:
        return self.step_in_epoch > 0

    def improves(self, top1: float) -> bool:
        return self.best["top1"] is None or top1 > self.best["top1"]

    def record_epoch(self, row: dict[str, Any], top1: dict[str, float], keep: str) -> tuple[str, bool]:
        """Add a finished epoch's ``row`` to the history. ``top1``: the validation top-1 of each
        weights evaluated (``model``, and ``ema`` with EMA). Returns the weights the run keeps
        from the epoch and whether they are its new best: the best top-1 with ``keep="best"``;
        with ``keep="last"`` always, the EMA weights if any (nothing is chosen on the
        validation images)."""
        if keep == "last":
            source = "ema" if "ema" in top1 else "model"
            improved = True
        else:
            source = max(top1, key=lambda k: top1[k])
            improved = self.improves(top1[source])
        if improved:
            self.best = {"top1": top1[source], "epoch": row["epoch"], "weights": source}
        self.history.append(row)
        return source, improved

    def to_dict(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint keys of this state; ``rng`` holds every process's current RNG state."""
        return {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "epoch_sums": self.sums.to_dict(), "history": list(self.history), "best": dict(self.best),
            "rng": rng, "epoch_rng": self.epoch_rng if self.mid_epoch else None,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any], rank: int, world_size: int) -> RunState:
        """The state saved by :meth:`to_dict`, for process ``rank`` of ``world_size``. RNG states
        saved by another number of processes are dropped (the caller says so)."""
        same_world = len(state["rng"]) == world_size
        return cls(epoch=state["epoch"], step_in_epoch=state["step_in_epoch"], sums=EpochSums(**state["epoch_sums"]),
                   history=list(state["history"]), best=dict(state["best"]),
                   epoch_rng=state.get("epoch_rng") if same_world and state["step_in_epoch"] else None,
                   resume_rng=state["rng"][rank] if same_world else None)


@dataclass
class Batch:
    """One micro-batch: its index in the epoch, its data, and its place in an update."""

    step: int
    images: torch.Tensor
    targets: torch.Tensor
    group_size: int
    ends_update: bool
    ends_epoch: bool


def epoch_batches(loader: DataLoader, accum_steps: int, start: int = 0,
                  on_replayed: Callable[[], None] | None = None) -> Iterator[Batch]:
    """The batches of ``loader`` from index ``start`` on, grouped into updates of ``accum_steps``
    micro-batches (the last group of an epoch may be shorter). The first ``start`` batches are
    drawn and dropped so the data order is the uninterrupted one; ``on_replayed`` runs after."""
    total = len(loader)
    iterator = iter(loader)
    for _ in range(start):
        next(iterator)
    if on_replayed is not None:
        on_replayed()
    for step in range(start, total):
        images, targets = next(iterator)
        group_start = step - step % accum_steps
        group_size = min(accum_steps, total - group_start)
        yield Batch(step, images, targets, group_size, ends_update=step + 1 == group_start + group_size,
                    ends_epoch=step + 1 == total)
