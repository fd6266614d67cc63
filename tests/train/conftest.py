"""Fixtures of the training tests: a small image folder with a file name that is not UTF-8, and
a finished one-epoch run on it (session-wide, read-only: copy before changing)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.files import unchanged
from helpers.train import make_image_folder, train_argv


@pytest.fixture(scope="session")
def odd_name_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Three classes, 4 training and 2 validation images each at 32 px, and in ``val/class_1`` a
    copy of a class-0 image named in bytes that are not UTF-8."""
    root = make_image_folder(tmp_path_factory.mktemp("odd_name_data"), train_per_class=4, val_per_class=2, size=32)
    shutil.copy(root / "val" / "class_0" / "000.png", os.path.join(os.fsencode(root / "val" / "class_1"),
                                                                   b"odd_\xff.png"))
    yield from unchanged(root)


@pytest.fixture(scope="session")
def finished_run(odd_name_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A one-epoch ``effnet train`` run on ``odd_name_data``: its folder."""
    from effnet.cli import main

    out = tmp_path_factory.mktemp("runs") / "first"
    assert main(train_argv(odd_name_data, out)) == 0
    yield from unchanged(out)
