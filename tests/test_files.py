"""Atomic writes: the target is always the old file or the new one, whole."""

from __future__ import annotations

import os
import re

import pytest

from effnet import files
from effnet.errors import InputFileError


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
