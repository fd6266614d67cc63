"""Bad arguments and unusual file systems get a message that says what happened, before any
work (issue 16, items 13, 14, 16 and 18)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effnet.cli import main
from effnet.data import datasets
from effnet.data.images import ImageReadError, load_image
from effnet.errors import ConfigError
from effnet.predict import collect_images
from effnet.scaling import CompoundScaling


@pytest.mark.parametrize(("argv", "message"), [
    (["--phi", "inf"], "phi (--phi) must be a finite number, got inf"),
    (["--phi", "nan"], "phi (--phi) must be a finite number, got nan"),
    (["--phi", "1e6"], "phi=1e+06 gives width xinf, depth xinf at inf px, beyond what is built here"),
    (["--phi", "30"], "use a smaller --phi"),
    (["--phi=-1e6"], "use a larger --phi"),
    (["--phi", "1", "--alpha", "0"], "alpha (--alpha) must be a positive finite number (the paper's is 1.2), got 0"),
    (["--phi", "1", "--gamma", "-1"], "gamma (--gamma) must be a positive finite number"),
])
def test_scale_refuses_phi_and_bases_that_give_no_buildable_network(capsys, argv, message):
    assert main(["scale", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_scale_still_accepts_the_published_range():
    for phi in (-3.0, 0.0, 8.0):
        CompoundScaling().check(phi)
    with pytest.raises(ConfigError):
        CompoundScaling(beta=float("inf")).check(1.0)


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


def test_a_symlink_loop_is_followed_once_per_real_folder(tmp_path):
    root = tmp_path / "photos"
    _png(root / "a.png")
    _png(root / "sub" / "b.png")
    os.symlink(root, root / "sub" / "back_to_top")
    os.symlink(root / "sub", root / "again")  # a second name for a folder already read
    found = datasets.files_under(root)
    assert [p.relative_to(root).as_posix() for p in found] == ["a.png", "again/b.png"]
    assert len(collect_images([root]).files) == 2


def test_a_link_to_itself_and_a_file_without_permission_are_reported_as_such(tmp_path, monkeypatch):
    loop = tmp_path / "loop.png"
    os.symlink(loop, loop)
    with pytest.raises(ImageReadError, match="a symbolic link loop") as caught:
        load_image(loop)
    assert caught.value.kind == "unreadable" and "corrupt" not in caught.value.reason
    locked = _png(tmp_path / "locked.png")

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)  # root reads any file: fake the refusal
    with pytest.raises(ImageReadError, match="cannot read the file: permission denied") as caught:
        load_image(locked)
    assert "corrupt" not in caught.value.reason


def test_a_folder_that_cannot_be_listed_is_named_with_the_reason(tmp_path, monkeypatch, capsys):
    _png(tmp_path / "open" / "a.png")
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


def test_export_arguments_are_checked_before_the_model_is_loaded(tmp_path, capsys, monkeypatch):
    from effnet.cli import export

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(export, "load_deployable", never)
    for tolerance in ("-1", "0", "nan", "inf"):
        assert main(["export", "--checkpoint", "efficientnet_b0", "--format", "onnx", "--tolerance", tolerance,
                     "--out", str(tmp_path / "m.onnx")]) == 2
        assert "tolerance must be a positive number" in capsys.readouterr().err
    assert main(["export", "--checkpoint", "efficientnet_b0", "--format", "onnx", "--opset", "3",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert "unsupported ONNX opset 3" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--models", ""], "argument --models: expected comma-separated names, got '' (nothing to measure)"),
    (["--models", " , "], "nothing to measure"),
    (["--batch", "0"], "batch sizes must be positive integers"),
    (["--batch", ""], "batch sizes must be positive integers"),
])
def test_bench_refuses_an_empty_model_list_or_batch(capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        main(["bench", *argv])
    assert exited.value.code == 2 and message in capsys.readouterr().err
