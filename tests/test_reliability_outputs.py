"""Outputs are never lost or left corrupt: odd file names, signals, full disks, unusable --out
paths, and CSV values with commas or quotes (issue 16, items 1, 3, 4, 11 and 12)."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from effnet import create_model, files
from effnet.cli import main
from effnet.errors import DiskFullError
from effnet.train.metrics import EvalResult, Mistake
from effnet.train.reporting import save_evaluation
from effnet.weights.io import save_model

CLASSES = ["round, filled", 'say "cheese"', "plain"]
BAD_NAME = b"img_\xff.png"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = create_model("efficientnet_b0", num_classes=3, width=0.25, depth=0.25, resolution=32)
    model.describe(class_names=CLASSES)
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _write_images(folder: Path, names: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(
            os.path.join(os.fsencode(folder), name), format="PNG")
    return folder


@pytest.fixture
def images(tmp_path) -> Path:
    return _write_images(tmp_path / "images", [b"a.png", BAD_NAME, b"z.png"])


def _predict(images: Path, checkpoint: Path, *extra: str) -> int:
    return main(["predict", str(images), "--checkpoint", str(checkpoint), "--device", "cpu", "--batch-size", "1",
                 "--no-progress", *extra])


@pytest.mark.parametrize("suffix", ["csv", "json", "txt"])
def test_a_file_name_that_is_not_utf8_is_classified_and_written_escaped(images, checkpoint, tmp_path, capsys,
                                                                        suffix):
    out = tmp_path / f"p.{suffix}"
    assert _predict(images, checkpoint, "--out", str(out), "--top-k", "1") == 0
    text = out.read_text(encoding="utf-8")
    if suffix == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        assert [Path(row["path"]).name for row in rows] == ["a.png", "img_\\xff.png", "z.png"]
        assert {row["class_name"] for row in rows} <= set(CLASSES)
    elif suffix == "json":
        assert [Path(entry["path"]).name for entry in json.loads(text)] == ["a.png", "img_\\xff.png", "z.png"]
    else:
        assert "img_\\xff.png" in text and "a.png" in text and "z.png" in text
    assert "wrote 3 prediction(s)" in capsys.readouterr().out


def test_sigterm_during_predict_leaves_a_valid_json_file_with_what_was_done(images, checkpoint, tmp_path):
    out = tmp_path / "p.json"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from effnet import infer
        from effnet.cli import main
        real = infer.Classifier.probabilities
        calls = []
        def probabilities(self, batch):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(self, batch)
        infer.Classifier.probabilities = probabilities
        sys.exit(main(["predict", {str(images)!r}, "--checkpoint", {str(checkpoint)!r}, "--device", "cpu",
                       "--batch-size", "1", "--no-progress", "--out", {str(out)!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "interrupted (SIGTERM)" in done.stderr
    entries = json.loads(out.read_text())
    assert 1 <= len(entries) <= 2 and entries[0]["path"].endswith("a.png")


def test_per_class_and_confusion_csv_quote_class_names_with_commas_and_quotes(tmp_path):
    confusion = torch.tensor([[2, 1, 0], [0, 3, 0], [1, 0, 1]])
    result = EvalResult(loss=0.5, top1=75.0, top5=100.0, count=8, confusion=confusion,
                        mistakes=[Mistake(Path(os.fsdecode(b"/data/" + BAD_NAME)), CLASSES[0], CLASSES[1], 0.9)])
    save_evaluation(result, CLASSES, tmp_path)
    per_class = list(csv.reader((tmp_path / "per_class.csv").open(encoding="utf-8")))
    assert per_class == [["class", "images", "accuracy"], [CLASSES[0], "3", "66.6667"], [CLASSES[1], "3", "100.0000"],
                         [CLASSES[2], "2", "50.0000"]]
    matrix = list(csv.reader((tmp_path / "confusion_matrix.csv").open(encoding="utf-8")))
    assert matrix[0] == ["true\\predicted", *CLASSES]
    assert [row[0] for row in matrix[1:]] == CLASSES and [list(map(int, row[1:])) for row in matrix[1:]] == \
        confusion.tolist()
    [mistake] = list(csv.DictReader((tmp_path / "mistakes.csv").open(encoding="utf-8")))
    assert mistake["path"] == "/data/img_\\xff.png" and mistake["predicted_class"] == CLASSES[1]


def test_printable_path_escapes_only_the_bytes_that_are_not_utf8():
    assert files.printable_path(os.fsdecode(b"dir/\xc3\xa9t\xe9.png")) == "dir/\u00e9t\\xe9.png"
    assert files.printable_path(b"plain.png") == "plain.png"


# ------------------------------------------------------------------ full disk
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_predict_says_so_keeps_the_previous_file_and_leaves_no_partial_one(
        images, checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "p.csv"
    out.write_text("the previous results\n")
    from effnet import infer

    monkeypatch.setattr(infer.CsvWriter, "write", _disk_full)
    assert _predict(images, checkpoint, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"disk full while writing {out}" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "the previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "p.csv"]


def test_a_torch_save_that_fails_on_a_nearly_full_disk_is_reported_as_disk_full(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    path.write_bytes(b"the good checkpoint")

    def torch_save(temp):
        temp.write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: SimpleNamespace(free=1024))
    with pytest.raises(DiskFullError, match=f"disk full while writing {path}"):
        files.atomic_write(path, torch_save)
    assert path.read_bytes() == b"the good checkpoint" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_write_reports_enospc_as_disk_full_and_other_errors_unchanged(tmp_path):
    with pytest.raises(DiskFullError):
        files.atomic_write(tmp_path / "x.bin", _disk_full)
    with pytest.raises(KeyError):
        files.atomic_write(tmp_path / "x.bin", lambda temp: {}["missing"])
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ bad --out
def test_predict_refuses_an_out_that_is_a_folder_or_another_kind_of_file_before_any_work(
        images, checkpoint, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    assert _predict(images, checkpoint, "--out", str(folder)) == 2
    assert f"{folder} is a folder; give a file name inside it" in capsys.readouterr().err
    precious = tmp_path / "best.pt"
    precious.write_bytes(b"weights")
    assert _predict(images, checkpoint, "--out", str(precious)) == 2
    assert "already exists and is not a .csv/.json" in capsys.readouterr().err
    assert precious.read_bytes() == b"weights"


def test_outputs_in_a_read_only_folder_are_refused_before_any_work(images, checkpoint, tmp_path, capsys,
                                                                    monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path) != locked)  # root ignores chmod
    assert _predict(images, checkpoint, "--out", str(locked / "p.csv")) == 2
    assert f"cannot write into {locked}: permission denied" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out",
                 str(locked / "m.onnx")]) == 2
    assert f"cannot write into {locked}: permission denied" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(images), "--out", str(locked / "eval")]) == 2
    assert f"cannot write into {locked}: permission denied" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


def test_export_and_eval_and_train_refuse_an_out_of_the_wrong_kind(checkpoint, tmp_path, capsys):
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(folder)]) == 2
    assert f"{folder} is a folder" in capsys.readouterr().err
    notes = tmp_path / "notes.csv"
    notes.write_text("keep me")
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(notes)]) == 2
    assert "already exists and is not a .onnx file" in capsys.readouterr().err
    assert main(["quantize", "--checkpoint", str(checkpoint), "--calib", str(tmp_path), "--eval", str(tmp_path),
                 "--out", str(notes)]) == 2
    assert "already exists and is not a .onnx file" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path), "--out", str(notes)]) == 2
    assert f"cannot create {notes}: {notes} is a file, not a folder" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(notes)]) == 2
    assert f"cannot create {notes}: {notes} is a file, not a folder" in capsys.readouterr().err
    assert notes.read_text() == "keep me"


def test_check_output_file_accepts_a_new_file_in_a_new_folder(tmp_path):
    assert files.check_output_file(tmp_path / "new" / "deeper" / "p.csv", (".csv",)) == \
        tmp_path / "new" / "deeper" / "p.csv"
    assert not (tmp_path / "new").exists()
