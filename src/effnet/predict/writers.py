"""Prediction outputs: an aligned table, CSV, or JSON records of :data:`effnet_runtime.portable.PREDICTION_SCHEMA`."""

from __future__ import annotations

import csv
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO

from effnet_runtime.portable import CSV_COLUMNS, csv_rows

from ..errors import ConfigError
from ..infer import Prediction
from ..table import format_table

FORMATS = ("table", "csv", "json")


def format_for(out: str | Path | None, format: str | None = None) -> str:
    """The output format: ``format`` when given, else from ``out``'s suffix (.csv, .json), else table."""
    if format is not None:
        if format not in FORMATS:
            raise ConfigError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
        return format
    suffix = Path(out).suffix.lower().lstrip(".") if out is not None else ""
    return suffix if suffix in ("csv", "json") else "table"


class PredictionWriter(ABC):
    """Writes predictions as they come; :meth:`close` finishes the output (call it even after an
    interruption: what was predicted so far is kept)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    @abstractmethod
    def write(self, prediction: Prediction) -> None:
        """Add one prediction to the output."""

    def close(self) -> None:
        self.stream.flush()


class TableWriter(PredictionWriter):
    """An aligned table (printed at the end: column widths need every row): image, rank, class,
    probability; a failed file has its error in the class column."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self.rows: list[list[object]] = []

    def write(self, prediction: Prediction) -> None:
        if not prediction.ok:
            self.rows.append([prediction.source, "", f"error: {prediction.error}", ""])
        for rank, _, name, probability in prediction.ranked():
            self.rows.append([prediction.source if rank == 1 else "", rank, name, f"{probability:.2%}"])

    def close(self) -> None:
        if self.rows:
            self.stream.write(format_table(["image", "rank", "class", "probability"], self.rows) + "\n")
        super().close()


class CsvWriter(PredictionWriter):
    """One row per image and rank (:data:`effnet_runtime.portable.CSV_COLUMNS`: path, rank, class_index,
    class_name, probability, error)."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self.csv = csv.writer(stream, lineterminator="\n")
        self.csv.writerow(CSV_COLUMNS)

    def write(self, prediction: Prediction) -> None:
        self.csv.writerows(csv_rows(prediction.record(None)))
        self.stream.flush()


class JsonWriter(PredictionWriter):
    """A JSON list, one record of :data:`effnet_runtime.portable.PREDICTION_SCHEMA` per image (``path``,
    ``model``, ``top_k``, ``error``; and ``predictions``, the deprecated name of ``top_k``),
    streamed and closed even after an interruption."""

    def __init__(self, stream: IO[str], model: str | None = None) -> None:
        super().__init__(stream)
        self.model = model
        self.count = 0
        stream.write("[")

    def write(self, prediction: Prediction) -> None:
        entry = prediction.record(self.model, legacy="predict")
        self.stream.write(("," if self.count else "") + "\n  " + json.dumps(entry))
        self.count += 1
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n]\n")
        super().close()


def open_writer(format: str, stream: IO[str], model: str | None = None) -> PredictionWriter:
    """A writer for ``format`` (``table``, ``csv`` or ``json``) on ``stream``; ``model``: the
    model's name, recorded in JSON records."""
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "json":
        return JsonWriter(stream, model)
    return TableWriter(stream) if format == "table" else CsvWriter(stream)
