"""The Ray engine's output folder: parts appear whole, the marker comes last, a path is never
written twice, resuming reads what is there, and the three formats carry the prediction schema."""

from __future__ import annotations

import csv
import json

import pytest

from effnet_runtime.portable import CSV_COLUMNS, PREDICTION_SCHEMA, csv_rows, prediction_record

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
from effnet.errors import OutputError  # noqa: E402
from effnet.predict.parts import (  # noqa: E402
    PREDICTION_ARROW_SCHEMA,
    SUCCESS_MARKER,
    PartFolder,
    part_format,
    predictions_table,
)


def _records(*paths: str) -> list[dict]:
    return [prediction_record(p, "tiny", [(2, "two", 0.75), (0, "zero", 0.25)]) if "bad" not in p
            else prediction_record(p, "tiny", error="empty file (0 bytes)") for p in paths]


def test_arrow_columns_are_the_prediction_schema():
    assert PREDICTION_ARROW_SCHEMA.names == PREDICTION_SCHEMA["required"]
    ranked = PREDICTION_ARROW_SCHEMA.field("top_k").type.value_type
    assert [ranked.field(i).name for i in range(ranked.num_fields)] == PREDICTION_SCHEMA["properties"]["top_k"][
        "items"]["required"]


def test_parts_are_published_whole_and_the_marker_last(tmp_path):
    out = tmp_path / "out"
    folder = PartFolder(out, rows_per_part=3)
    folder.add(predictions_table(_records("a.png", "b.png")))
    assert folder.parts() == []  # below rows_per_part: still queued
    folder.add(predictions_table(_records("c.png", "bad.png")))
    assert len(folder.parts()) == 1 and not (out / SUCCESS_MARKER).exists()
    folder.add(predictions_table(_records("d.png")))
    folder.finish({"written": 5})
    assert len(folder.parts()) == 2 and json.loads((out / SUCCESS_MARKER).read_text()) == {"written": 5}
    assert sorted(p.name for p in out.iterdir()) == sorted([SUCCESS_MARKER, *(p.name for p in folder.parts())])
    rows = pa.concat_tables(pq.read_table(p) for p in folder.parts()).to_pylist()
    assert rows == _records("a.png", "b.png", "c.png", "bad.png", "d.png")


def test_a_path_is_written_once_and_resuming_reads_what_is_there(tmp_path):
    out = tmp_path / "out"
    first = PartFolder(out, rows_per_part=10)
    kept = first.add(predictions_table(_records("a.png", "b.png", "a.png")))
    assert kept.column("path").to_pylist() == ["a.png", "b.png"] and first.duplicates == 1
    first.flush()  # an interrupted run: a whole part, no marker
    (out / ".part-x.tmp-1-abcd.parquet").write_bytes(b"half a file")  # a temporary file of a killed writer
    with pytest.raises(OutputError, match="already holds 1 part file.* pass --resume"):
        PartFolder(out)
    second = PartFolder(out, resume=True, rows_per_part=10)
    assert second.done == {"a.png", "b.png"} and not (out / ".part-x.tmp-1-abcd.parquet").exists()
    assert second.add(predictions_table(_records("b.png", "c.png"))).column("path").to_pylist() == ["c.png"]
    second.finish({})
    paths = [p for part in second.parts() for p in pq.read_table(part).column("path").to_pylist()]
    assert sorted(paths) == ["a.png", "b.png", "c.png"]


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_csv_and_json_lines_parts_hold_the_same_records(tmp_path, name):
    out = tmp_path / name
    assert part_format(out) == name.split(".")[1] and part_format(tmp_path / "x") == "parquet"
    folder = PartFolder(out)
    folder.add(predictions_table(_records("a.png", "bad.png")))
    folder.finish({})
    [part] = folder.parts()
    text = part.read_text()
    if name.endswith(".csv"):
        rows = list(csv.reader(text.splitlines()))
        assert rows[0] == list(CSV_COLUMNS)
        assert rows[1:] == [[str(v) for v in row] for r in _records("a.png", "bad.png") for row in csv_rows(r)]
    else:
        assert [json.loads(line) for line in text.splitlines()] == _records("a.png", "bad.png")
    assert PartFolder(out, resume=True).done == {"a.png", "bad.png"}


def test_a_damaged_part_or_a_file_in_the_way_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part-old-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(OutputError, match="part-old-00000.parquet .*move it out of the folder and run again with "
                                          "--resume"):
        PartFolder(tmp_path / "out", resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        PartFolder(tmp_path / "file")
