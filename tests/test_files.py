"""effnet.files: atomic writes (the target is always the old file or the new one, whole), output
checks before any work, full-disk messages, printable paths."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from effnet import files
from effnet.cli import main
from effnet.errors import DiskFullError, InputFileError
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


def test_a_work_folder_is_removed_after_use_and_dead_runs_leftovers_by_the_next(tmp_path) -> None:
    dead = tmp_path / ".run-dead"
    dead.mkdir()
    (dead / files.OWNER_LOCK).touch()  # its owner is gone: nobody holds the lock
    (dead / "model.onnx").write_bytes(b"half")
    old, young = tmp_path / ".run-old", tmp_path / ".run-young"  # no lock file: judged by age
    old.mkdir()
    young.mkdir()
    os.utime(old, (1, 1))
    (tmp_path / "mine").mkdir()
    with files.work_folder(tmp_path, ".run-") as live:
        assert not dead.exists() and not old.exists() and young.exists()
        (live / "built").mkdir()
        (live / "built" / "a.txt").write_text("whole")
        assert files.remove_dead_work_folders(tmp_path, ".run-") == []  # a live owner's folder stays
        files.publish_folder(live / "built", tmp_path / "mine")  # onto an empty folder, in one rename
    assert not live.exists() and (tmp_path / "mine" / "a.txt").read_text() == "whole"


@pytest.mark.timeout(60)  # opening the FIFO would block
def test_input_file_names_what_a_path_is_without_opening_it(tmp_path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    regular = tmp_path / "model.safetensors"
    regular.write_bytes(b"x")
    link = tmp_path / "link.pt"
    link.symlink_to(regular)
    assert files.input_file(regular, "checkpoint") == regular and files.input_file(link, "checkpoint") == link
    for path, kind in ((fifo, "a FIFO (named pipe)"), ("/dev/zero", "a character device"), (tmp_path, "a folder")):
        message = f"checkpoint {path} is not a regular file but {kind}; give a file"
        with pytest.raises(InputFileError, match=f"^{re.escape(message)}$"):
            files.input_file(path, "checkpoint")
    with pytest.raises(InputFileError, match="recipe file .*missing.yaml does not exist"):
        files.input_file(tmp_path / "missing.yaml", "recipe file")
