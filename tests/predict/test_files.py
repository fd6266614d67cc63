"""effnet.predict.files: the images a prediction reads (files, folders, globs) and the problems found."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from effnet.predict import collect_images
from helpers.images import write_png


def test_a_folder_that_cannot_be_listed_is_named_with_the_reason(tmp_path, monkeypatch, capsys):
    write_png(tmp_path / "open" / "a.png")
    (tmp_path / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    images = collect_images([tmp_path])
    assert [p.name for p in images.files] == ["a.png"]
    assert images.problems == [(str(tmp_path / "locked"), "folder cannot be read: permission denied")]
