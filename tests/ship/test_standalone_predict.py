"""The shipped ``predict.py`` on bad inputs: each file fails alone (FIFOs and devices unopened,
bombs and thin images before decoding), any file name survives its CSV, arguments are checked."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from effnet.cli import main
from effnet.ship import build as ship_build
from effnet.weights.io import save_model
from effnet_runtime import portable
from helpers.deploy import tiny_model, write_images
from helpers.images import bomb_png

CLASSES = ["0", "1", "2"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shipped")
    model = tiny_model()
    model.describe(class_names=CLASSES)
    checkpoint = save_model(model, root / "tiny.safetensors")
    out = root / "folder"
    assert main(["ship", "--checkpoint", str(checkpoint), "--target", "onnxruntime", "--eval",
                 str(write_images(root / "eval")), "--out", str(out), "--no-speed",
                 "--min-top1", "0"]) == 0  # the tiny network is untrained: at chance level
    return out


def run(folder: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", str(folder / "predict.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def scripts_only(tmp_path_factory) -> Path:
    """predict.py and effnet_portable.py as ship copies them, without a model: arguments are
    checked before the model is loaded."""
    folder = tmp_path_factory.mktemp("scripts")
    shutil.copy(Path(ship_build.__file__).with_name("standalone_predict.py"), folder / "predict.py")
    shutil.copy(Path(portable.__file__), folder / "effnet_portable.py")
    return folder


@pytest.mark.slow
@pytest.mark.timeout(300)  # a script that opened the FIFO would block
def test_each_bad_file_fails_alone_and_every_name_survives_the_csv(shipped, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good)
    odd_name = tmp_path / "a, b\nc.png"
    shutil.copy(good, odd_name)
    (tmp_path / "notes.png").write_text("a text file, not a picture\n")
    (tmp_path / "bomb.png").write_bytes(bomb_png(100_000))  # 1e10 pixels declared in 60 bytes
    Image.new("RGB", (1, 100_000)).save(tmp_path / "thin.png")  # 36 x 3,600,000 pixels once resized
    os.mkfifo(tmp_path / "fifo.png")
    names = ["good.png", "fifo.png", "/dev/zero", "notes.png", "bomb.png", "thin.png", odd_name.name]
    done = run(shipped, *names, "--batch-size", "2", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [row["path"] for row in rows] == names
    errors = {row["path"]: row["error"] for row in rows}
    assert errors["good.png"] == errors[odd_name.name] == "" and rows[0]["class_name"] in CLASSES
    assert "not a regular file but a FIFO" in errors["fifo.png"]
    assert "not a regular file but a character device" in errors["/dev/zero"]
    assert "decompression bomb" in errors["bomb.png"] and "too thin" in errors["thin.png"]
    assert errors["notes.png"]


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--batch-size", "-1"], ["--top-k", "nan"],
                                  ["--top-k", "1" + "0" * 5000], ["--threads", "99999"], ["--batch-size", "\u00b2"]])
def test_bad_arguments_are_one_usage_error(scripts_only, tmp_path, argv):
    Image.new("RGB", (40, 30)).save(tmp_path / "good.png")
    done = run(scripts_only, "good.png", *argv, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"predict.py: error: argument {argv[0]}: ")
