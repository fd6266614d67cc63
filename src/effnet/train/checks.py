"""Runs that cannot run, would start but teach nothing, or stop part-way, are refused before any work.

The trainer checks its settings against the device first, then the data and the model once
they are known; each check raises a :class:`~effnet.errors.ConfigError` that says what to change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from ..errors import ConfigError
from .config import TrainConfig

LOG = logging.getLogger("effnet.train")


def check_run_settings(config: TrainConfig, device: torch.device, distributed: bool) -> None:
    """Training data is named, and the precision and BatchNorm settings run on ``device``."""
    run = config.run
    if config.data.path is None:
        raise ConfigError("no training data: give --data DIR (a folder of class folders, or train/ and val/)")
    if run.amp == "fp16" and device.type != "cuda":
        raise ConfigError("run.amp=fp16 needs a CUDA device (fp16 training uses CUDA grad scaling); "
                          "use run.amp=bf16 on the CPU")
    if run.sync_bn and distributed and device.type == "cpu":
        raise ConfigError("run.sync_bn needs CUDA devices (SyncBatchNorm does not run on the CPU); "
                          "drop --sync-bn for CPU runs")


def check_class_count(class_names: Sequence[str], allow_single_class: bool, where: object) -> None:
    """A single class makes every prediction right ("100%") while learning nothing: refused
    unless ``allow_single_class`` (``--allow-single-class``), then warned about."""
    if len(class_names) != 1:
        return
    if not allow_single_class:
        raise ConfigError(f"{where} holds a single class ({class_names[0]!r}): every prediction would be right and "
                          "the model would learn nothing. Add a folder per class, or pass --allow-single-class "
                          "(data.allow_single_class=true) to train anyway")
    LOG.warning("warning: a single class (%r): accuracy will be 100%% whatever the model learns", class_names[0])


def check_batch_for_batchnorm(batch_size: int, train_images: int, smallest_size: int, stride: int) -> None:
    """BatchNorm in training needs more than one value per channel: a batch of one image whose
    last feature map is a single pixel cannot train. ``batch_size`` is per process; a training
    set smaller than one batch makes one batch of all its images."""
    batch = min(batch_size, train_images)
    last_map = math.ceil(smallest_size / stride) ** 2
    if batch * last_map < 2:
        raise ConfigError(f"a batch of {batch} image(s) at {smallest_size} px leaves BatchNorm one value per channel "
                          f"in the last stage (a {stride}x downsampled 1x1 map), which cannot train: use "
                          f"--batch-size 2 or more (and at least 2 training images), or --img-size "
                          f"{2 * stride} or more")
