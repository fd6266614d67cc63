"""Runs that would start but teach nothing, or stop part-way, are refused before any work.

The trainer calls these once the data and the model are known; each raises a
:class:`~effnet.errors.ConfigError` that says what to change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from ..errors import ConfigError

LOG = logging.getLogger("effnet.train")


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
