"""effnet.train.checks: runs that would teach nothing or stop part-way are refused before any work."""

from __future__ import annotations

import logging

import pytest

from effnet.errors import ConfigError
from effnet.train import Trainer
from helpers.train import make_image_folder, tiny_config


def test_a_single_class_is_refused_unless_allowed(tmp_path, caplog):
    odd_name_data = make_image_folder(tmp_path / "one", classes=1, train_per_class=4, val_per_class=2, size=32)
    with pytest.raises(ConfigError, match="holds a single class .*--allow-single-class"):
        Trainer(tiny_config(odd_name_data), run_dir=tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="effnet.train"):
        Trainer(tiny_config(odd_name_data, **{"data.allow_single_class": True}), run_dir=tmp_path / "run")
    assert "a single class ('class_0'): accuracy will be 100%" in caplog.text
    assert not (tmp_path / "run").exists()


def test_batch_size_one_with_a_one_pixel_last_map_is_refused_before_training(odd_name_data, tmp_path):
    with pytest.raises(ConfigError, match="a batch of 1 image.* at 32 px leaves BatchNorm one value per channel"):
        Trainer(tiny_config(odd_name_data, **{"data.batch_size": 1}), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
