"""effnet.predict.writers: predictions written whole, whatever the file names and the disk."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from effnet.predict import CsvWriter
from helpers.files import disk_full
from helpers.predict import CLASSES, predict


@pytest.mark.parametrize("suffix", ["csv", "json", "txt"])
def test_a_file_name_that_is_not_utf8_is_classified_and_written_escaped(odd_images, tiny_checkpoint, tmp_path, capsys,
                                                                        suffix):
    out = tmp_path / f"p.{suffix}"
    assert predict(odd_images, tiny_checkpoint, "--out", str(out), "--top-k", "1") == 0
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


def test_a_full_disk_during_predict_says_so_keeps_the_previous_file_and_leaves_no_partial_one(
        odd_images, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "p.csv"
    out.write_text("the previous results\n")
    monkeypatch.setattr(CsvWriter, "write", disk_full)
    assert predict(odd_images, tiny_checkpoint, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"disk full while writing {out}" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "the previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "p.csv"]
