"""``effnet train``, ``effnet eval`` and ``effnet demo`` from the command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from effnet.cli import main
from helpers.train import make_image_folder, tiny_assignments

pytestmark = pytest.mark.usefixtures("single_thread")


def _sets(**overrides) -> list[str]:
    return [arg for item in tiny_assignments(**overrides) for arg in ("--set", item)]


@pytest.mark.slow
def test_train_then_eval(tmp_path, capsys) -> None:
    data = make_image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    code = main(["train", "--data", str(data), "--out", str(run_dir), "--epochs", "1", "--no-progress",
                 *_sets(**{"schedule.warmup_epochs": 0})])
    assert code == 0
    printed = capsys.readouterr().out
    assert "completed" in printed and "val top-1 %" in printed and str(run_dir / "model.safetensors") in printed

    assert main(["eval", "--checkpoint", str(run_dir / "model.safetensors"), "--data", str(data),
                 "--workers", "0", "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "top-1 %" in printed and "accuracy %" in printed and "confusion matrix" in printed
    assert printed.count("class_0") >= 3  # per-class row, confusion header and row
    written = {p.name for p in (tmp_path / "eval").iterdir()}
    assert written - {"mistakes.png"} == {"confusion_matrix.png", "confusion_matrix.csv", "per_class.csv",
                                          "mistakes.csv"}
    mistakes = (tmp_path / "eval" / "mistakes.csv").read_text().splitlines()[1:]
    assert mistakes and "mistakes.png" in written  # one epoch of a tiny model misreads some images
    assert f"{len(mistakes)} misclassified image(s)" in printed and mistakes[0].split(",")[0] in printed


def test_train_errors_are_reported_with_exit_code_2(tmp_path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 2
    assert "effnet train: error: data path" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--set", "optimizer.lr"]) == 2
    assert "expected SECTION.KEY=VALUE" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    assert "none.pt does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_command_writes_the_digits_trains_and_prints_the_table(tmp_path, capsys) -> None:
    code = main(["demo", "--out", str(tmp_path), "--epochs", "1",
                 "--set", 'model.overrides={"width": 0.25, "depth": 0.25}', "--set", "schedule.warmup_epochs=0",
                 "--set", "run.progress=false", "--set", "run.tensorboard=false"])
    assert code == 0
    printed = capsys.readouterr().out
    assert re.search(r"held-out digits\s+1000\n", printed) and re.search(r"top-1 %\s+\d+\.\d\d\n", printed)
    assert re.search(r"start\s+from scratch\n", printed)
    # trained on all 4,000 training digits; the final weights are kept, nothing chosen on the held-out ones
    assert re.search(r"\(4,000 train digits\)", printed)
    assert re.search(r"kept\s+epoch 1, ema weights \(the last: nothing chosen on the held-out digits\)", printed)
    misread = re.search(r"misclassified\s+(\d+) \(see (.+mistakes\.png)\)\n", printed)
    assert misread and Path(misread[2]).is_file()  # one epoch of a quarter-size B0 misreads some digits
    assert all("/val/" in line for line in (Path(misread[2]).parent / "mistakes.csv").read_text().splitlines()[1:])
    assert len((Path(misread[2]).parent / "mistakes.csv").read_text().splitlines()) == int(misread[1]) + 1
    assert all(re.search(rf"^ *{digit}\s+100\s", printed, re.MULTILINE) for digit in range(10))  # per-digit rows
    assert sorted(p.name for p in (tmp_path / "data" / "train").iterdir()) == [str(d) for d in range(10)]
