"""Writing training checkpoints: their contents, atomic saves, RNG states and seeding, what ``--resume`` accepts.

Reading them back (and the file names of a run) is :mod:`effnet.weights.trained`'s job.

A checkpoint is a plain dict saved with ``torch.save`` that ``torch.load(weights_only=True)``
reads: tensors, numbers, strings, lists and dicts only. It is written with
:func:`effnet.files.atomic_write`, so a crash at any moment leaves either the old or the new
file whole.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputFileError
from ..files import atomic_write, input_file
from ..model import EfficientNet
from ..weights.io import model_metadata
from ..weights.trained import BEST, LAST, read_training_checkpoint
from .config import TrainConfig
from .ema import ModelEMA
from .schedule import LRSchedule
from .state import RunState


def training_checkpoint(run: RunState, rng: list[dict[str, Any]], model: EfficientNet,
                        optimizer: torch.optim.Optimizer, schedule: LRSchedule, scaler: torch.amp.GradScaler,
                        ema: ModelEMA | None, eval_weights: str, config: TrainConfig,
                        world_size: int, train_images: int) -> dict[str, Any]:
    """Everything a resume needs, in ``weights_only``-loadable types. ``rng``: every process's
    RNG state; ``eval_weights``: the weights (``model`` or ``ema``) the run keeps;
    ``train_images``: the size of the training set (a resume sees whether the data changed)."""
    return {
        "format": "effnet-train", "format_version": 1,
        **run.to_dict(rng),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "eval_weights": eval_weights,
        "config": config.to_dict(),
        "model_meta": model_metadata(model),
        "world_size": world_size,
        "train_images": train_images,
    }


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Atomically ``torch.save`` a checkpoint dict."""
    return atomic_write(path, lambda temp: torch.save(state, temp))


def resolve_resume(path: str | Path) -> Path:
    """``--resume`` accepts a run directory or a checkpoint file.

    In a run directory, the newest of its checkpoints: ``last.pt``, or ``best.pt`` where a
    run was killed after writing ``best.pt`` and before ``last.pt`` (an epoch end writes
    ``best.pt`` first, so ``last.pt`` never records a best epoch whose file is missing).
    """
    path = Path(path)
    if path.is_dir():
        last, best = path / LAST, path / BEST
        if best.is_file() and (not last.is_file() or best.stat().st_mtime_ns > last.stat().st_mtime_ns):
            return best
        if not last.is_file():
            raise InputFileError(f"run directory {path} has no {LAST} (nor {BEST}) to resume from: no epoch "
                                 "finished and no interrupted state was saved; start the run again (into this "
                                 "folder with --overwrite)")
        return last
    if not path.exists():
        raise InputFileError(f"cannot resume from {path}: no such run directory or checkpoint")
    return input_file(path, "checkpoint")


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint to resume from, read once: its path and its contents."""

    path: Path
    state: dict[str, Any]

    @classmethod
    def load(cls, resume: str | Path) -> ResumePoint:
        """Read what ``--resume`` names (a run directory or a checkpoint file)."""
        path = resolve_resume(resume)
        return cls(path, read_training_checkpoint(path))


def seed_generators(seed: int) -> None:
    """Seed the Python, NumPy and torch generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, in ``weights_only``-loadable types."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
