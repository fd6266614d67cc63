"""The output folder of a bulk run: part files published whole, a ``_SUCCESS`` marker last.

``OUT/`` holds ``part-<run>-<n>.parquet`` files (``.csv`` or ``.jsonl`` when ``OUT``'s name ends
so), each written under a hidden temporary name and renamed when complete
(:func:`effnet.files.atomic_write`), so the folder only ever holds whole parts, whatever stops the
run. Each row is one input's prediction with the fields of
:data:`effnet_runtime.portable.PREDICTION_SCHEMA` (in CSV: :data:`effnet_runtime.portable.CSV_COLUMNS`,
one row per rank). ``_SUCCESS`` (a JSON summary) is written after the last part of a complete
run and removed when a run starts. Resuming reads the paths already in the parts and skips them;
a path is never written twice.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from effnet_runtime.portable import CSV_COLUMNS, csv_rows

from ..errors import OutputError
from ..files import atomic_write, check_output_folder, printable_path, remove_stale_temps

SUCCESS_MARKER = "_SUCCESS"
"""The file a complete run writes last (a JSON summary of the run)."""
PART_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
"""Part formats chosen by the output folder's suffix; any other name gives Parquet."""
DEFAULT_ROWS_PER_PART = 10_000
RANKED_TYPE = pa.struct([("rank", pa.int32()), ("class_index", pa.int32()), ("class_name", pa.string()),
                         ("probability", pa.float64())])
PREDICTION_ARROW_SCHEMA = pa.schema([("schema_version", pa.int32()), ("path", pa.string()), ("model", pa.string()),
                                     ("top_k", pa.list_(RANKED_TYPE)), ("error", pa.string())])
"""The Arrow (and Parquet) form of :data:`effnet_runtime.portable.PREDICTION_SCHEMA`'s records."""


def part_format(folder: str | Path) -> str:
    """``parquet``, ``csv`` or ``jsonl``, from the output folder's suffix (:data:`PART_FORMATS`)."""
    return PART_FORMATS.get(Path(folder).suffix.lower(), "parquet")


def predictions_table(records: list[dict[str, Any]]) -> pa.Table:
    """Prediction records (:func:`effnet_runtime.portable.prediction_record`) as an Arrow table."""
    return pa.Table.from_pylist(records, schema=PREDICTION_ARROW_SCHEMA)


class PartFolder:
    """``folder`` opened for a run: stale temporary files and the marker removed, and with
    ``resume`` the paths already written read into :attr:`done` (without it, a folder holding
    parts is refused). :meth:`add` keeps the rows of paths not yet written and publishes a part
    every ``rows_per_part`` rows; :meth:`finish` publishes the rest and the marker."""

    def __init__(self, folder: str | Path, resume: bool = False, rows_per_part: int = DEFAULT_ROWS_PER_PART) -> None:
        self.folder = Path(folder)
        self.format = part_format(self.folder)
        shown = printable_path(self.folder)
        if rows_per_part < 1:
            raise OutputError(f"rows per part must be at least 1, got {rows_per_part}")
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"{shown} exists and is not a folder: the output is a folder of part files; choose "
                              "another name")
        check_output_folder(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = self.parts()
        if existing and not resume:
            raise OutputError(f"{shown} already holds {len(existing)} part file(s) of an earlier run: pass --resume "
                              "to add the inputs missing there, or choose another folder")
        remove_stale_temps(self.folder)
        (self.folder / SUCCESS_MARKER).unlink(missing_ok=True)
        self.done: set[str] = set()
        for part in existing:
            self.done.update(self._read_paths(part))
        self.rows_per_part = rows_per_part
        self.written = 0
        self.duplicates = 0
        self._run = uuid.uuid4().hex[:8]
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._count = 0

    def parts(self) -> list[Path]:
        """The complete part files in the folder, by name."""
        return sorted(self.folder.glob(f"part-*.{self.format}"))

    def add(self, table: pa.Table) -> pa.Table:
        """Queue ``table``'s rows whose path is not written yet; returns them."""
        paths = table.column("path").to_pylist()
        keep, seen = [], set()
        for i, path in enumerate(paths):
            if path not in self.done and path not in seen:
                keep.append(i)
                seen.add(path)
        if len(keep) < len(paths):
            self.duplicates += len(paths) - len(keep)
            table = table.take(keep)
        self.done.update(seen)
        self._pending.append(table.select(PREDICTION_ARROW_SCHEMA.names).cast(PREDICTION_ARROW_SCHEMA))
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.rows_per_part:
            self.flush()
        return table

    def flush(self) -> None:
        """Publish the queued rows as one part (nothing when none are queued)."""
        if not self._pending_rows:
            return
        table = pa.concat_tables(self._pending)
        path = self.folder / f"part-{self._run}-{self._count:05d}.{self.format}"
        atomic_write(path, lambda temp: self._write(table, temp))
        self._count += 1
        self.written += table.num_rows
        self._pending, self._pending_rows = [], 0

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Publish the queued rows, then the marker holding ``summary``."""
        self.flush()
        text = json.dumps(dict(summary), indent=1) + "\n"
        atomic_write(self.folder / SUCCESS_MARKER, lambda temp: temp.write_text(text, encoding="utf-8"))

    def _write(self, table: pa.Table, path: Path) -> None:
        if self.format == "parquet":
            pq.write_table(table, path)
            return
        text = io.StringIO()
        if self.format == "csv":
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for record in table.to_pylist():
                writer.writerows(csv_rows(record))
        else:
            text.writelines(json.dumps(record) + "\n" for record in table.to_pylist())
        path.write_text(text.getvalue(), encoding="utf-8")

    def _read_paths(self, part: Path) -> set[str]:
        try:
            if self.format == "parquet":
                return set(pq.read_table(part, columns=["path"]).column("path").to_pylist())
            with open(part, encoding="utf-8", newline="") as handle:
                if self.format == "csv":
                    return {row["path"] for row in csv.DictReader(handle)}
                return {json.loads(line)["path"] for line in handle if line.strip()}
        except (OSError, ValueError, KeyError, pa.ArrowException) as error:
            raise OutputError(f"cannot read {printable_path(part)} ({error}): it is damaged or not a part of this "
                              "engine; move it out of the folder and run again with --resume (its inputs are "
                              "predicted again)") from None
