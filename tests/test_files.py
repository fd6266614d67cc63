"""effnet.files: atomic writes (the target is always the old file or the new one, whole), output
checks before any work, full-disk messages, printable paths."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from effnet import files
from effnet.cli import main
from effnet.errors import DiskFullError
from helpers.files import disk_full
from helpers.predict import predict


def test_a_failed_write_keeps_the_previous_file_and_no_temp(tmp_path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"the good checkpoint")

    def broken(temp):
        temp.write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(path, broken)
    assert path.read_bytes() == b"the good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_temp_file_is_written_beside_the_target_with_its_suffix_then_renamed(tmp_path, monkeypatch) -> None:
    seen = []
    real_publish = files.publish

    def publish(temp, path):
        seen.append((temp.parent, temp.name, temp.stat().st_size > 0, path.exists()))
        return real_publish(temp, path)

    monkeypatch.setattr(files, "publish", publish)
    files.atomic_write(tmp_path / "model.onnx", lambda temp: temp.write_bytes(b"onnx"))
    [(parent, name, written, existed)] = seen
    assert (parent, written, existed) == (tmp_path, True, False)
    assert name.startswith(f".model{files.TEMP_MARK}{os.getpid()}-") and name.endswith(".onnx")
    assert (tmp_path / "model.onnx").read_bytes() == b"onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_stale_temps_are_removed(tmp_path) -> None:
    (tmp_path / ".last.pt.tmp-123").write_bytes(b"x")
    (tmp_path / files.temp_path_for(tmp_path / "best.pt").name).write_bytes(b"x")
    (tmp_path / "last.pt").write_bytes(b"y")
    assert len(files.remove_stale_temps(tmp_path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_printable_path_escapes_only_the_bytes_that_are_not_utf8():
    assert files.printable_path(os.fsdecode(b"dir/\xc3\xa9t\xe9.png")) == "dir/\u00e9t\\xe9.png"
    assert files.printable_path(b"plain.png") == "plain.png"


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
        files.atomic_write(tmp_path / "x.bin", disk_full)
    with pytest.raises(KeyError):
        files.atomic_write(tmp_path / "x.bin", lambda temp: {}["missing"])
    assert list(tmp_path.iterdir()) == []


def test_predict_refuses_an_out_that_is_a_folder_or_another_kind_of_file_before_any_work(
        odd_images, tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    assert predict(odd_images, tiny_checkpoint, "--out", str(folder)) == 2
    assert f"{folder} is a folder; give a file name inside it" in capsys.readouterr().err
    precious = tmp_path / "best.pt"
    precious.write_bytes(b"weights")
    assert predict(odd_images, tiny_checkpoint, "--out", str(precious)) == 2
    assert "already exists and is not a .csv/.json" in capsys.readouterr().err
    assert precious.read_bytes() == b"weights"


def test_outputs_in_a_read_only_folder_are_refused_before_any_work(odd_images, tiny_checkpoint, tmp_path, capsys,
                                                                    monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path) != locked)  # root ignores chmod
    assert predict(odd_images, tiny_checkpoint, "--out", str(locked / "p.csv")) == 2
    assert f"cannot write into {locked}: permission denied" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--out",
                 str(locked / "m.onnx")]) == 2
    assert f"cannot write into {locked}: permission denied" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(odd_images),
                 "--out", str(locked / "eval")]) == 2
    assert f"cannot write into {locked}: permission denied" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


def test_export_and_eval_and_train_refuse_an_out_of_the_wrong_kind(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--out", str(folder)]) == 2
    assert f"{folder} is a folder" in capsys.readouterr().err
    notes = tmp_path / "notes.csv"
    notes.write_text("keep me")
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--out", str(notes)]) == 2
    assert "already exists and is not a .onnx file" in capsys.readouterr().err
    assert main(["quantize", "--checkpoint", str(tiny_checkpoint), "--calib", str(tmp_path), "--eval", str(tmp_path),
                 "--out", str(notes)]) == 2
    assert "already exists and is not a .onnx file" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path), "--out", str(notes)]) == 2
    assert f"cannot create {notes}: {notes} is a file, not a folder" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(notes)]) == 2
    assert f"cannot create {notes}: {notes} is a file, not a folder" in capsys.readouterr().err
    assert notes.read_text() == "keep me"


def test_check_output_file_accepts_a_new_file_in_a_new_folder(tmp_path):
    assert files.check_output_file(tmp_path / "new" / "deeper" / "p.csv", (".csv",)) == \
        tmp_path / "new" / "deeper" / "p.csv"
    assert not (tmp_path / "new").exists()
