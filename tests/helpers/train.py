"""Shared by the training tests: a tiny image folder and a tiny, fast training config."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from effnet.train.config import TrainConfig
from effnet.train.recipes import build_config

TINY_MODEL = {"width": 0.25, "depth": 0.25}


def pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy picture whose class is easy to learn: stripes in three orientations, or a blob."""
    y, x = np.mgrid[0:size, 0:size]
    period = 4
    if label == 0:
        image = (y // period) % 2
    elif label == 1:
        image = (x // period) % 2
    elif label == 2:
        image = ((x + y) // period) % 2
    else:
        image = ((x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 4) ** 2).astype(int)
    noisy = image * 200 + rng.integers(0, 55, size=(size, size))
    return np.stack([noisy, np.roll(noisy, label, axis=0), noisy[::-1]], axis=-1).astype(np.uint8)


def make_image_folder(root: Path, classes: int = 3, train_per_class: int = 8, val_per_class: int = 4,
                      size: int = 24, seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.fromarray(pattern(label, size, rng)).save(folder / f"{index:03d}.png")
    return root


TINY_SETTINGS: dict[str, Any] = {
    "model.overrides": TINY_MODEL, "data.img_size": 32, "data.batch_size": 8, "data.num_workers": 0,
    "run.epochs": 2, "run.progress": False, "run.tensorboard": False, "progressive.mode": "none",
    "schedule.warmup_epochs": 0.5, "optimizer.lr": 0.003, "optimizer.lr_base_batch": None,
    "augment.color_jitter": 0.0, "augment.scale": [0.5, 1.0], "data.crop_pct": 1.0,
}


STRAIGHT_RUN: dict[str, Any] = {"data.batch_size": 4, "run.tensorboard": True}
"""conftest's ``straight_run``: 6 updates per epoch (room to signal mid-epoch), TensorBoard too."""


def tiny_assignments(**overrides: Any) -> list[str]:
    """``--set`` strings for a tiny B0 (width and depth 0.25) at 32 px, batch 8, no workers."""
    return [f"{key}={json.dumps(value)}" for key, value in {**TINY_SETTINGS, **overrides}.items()]


ONE_EPOCH = {"run.epochs": 1}


def train_argv(data: Path, out: Path, *extra: str, **settings: Any) -> list[str]:
    """``effnet train`` arguments: the tiny settings for one epoch (and ``settings``) on ``data`` into ``out``."""
    sets = [arg for assignment in tiny_assignments(**{**ONE_EPOCH, **settings}) for arg in ("--set", assignment)]
    return ["train", "--data", str(data), "--out", str(out), *sets, *extra]


def tiny_config(data: Path, **overrides: Any) -> TrainConfig:
    """The seed recipe with :func:`tiny_assignments` on ``data``."""
    return build_config("seed", {"data.path": str(data)}, tiny_assignments(**overrides))


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def without_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in ("epoch_time_s", "train_img_per_s")} for row in history]


def assert_mistakes_file_matches(run_dir: Path, confusion: torch.Tensor) -> list[dict[str, str]]:
    """``mistakes.csv`` lists every misclassified image once, each under its own class folder
    (so predictions were matched to the right files), with a sheet of them when there are any."""
    rows = list(csv.DictReader((run_dir / "mistakes.csv").open()))
    assert len(rows) == int(confusion.sum() - confusion.trace())
    assert all(Path(row["path"]).parent.name == row["true_class"] != row["predicted_class"] for row in rows)
    assert len({row["path"] for row in rows}) == len(rows)
    assert (run_dir / "mistakes.png").exists() == bool(rows)
    return rows
