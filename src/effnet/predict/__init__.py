"""``effnet predict`` over many files: collecting them, classifying them, writing the results.

:func:`~effnet.predict.files.collect_images` expands files, folders and globs;
:func:`~effnet.predict.run.predict_files` classifies them with an :class:`effnet.Classifier`
into a writer of :mod:`effnet.predict.writers` (table, CSV, or JSON records of the prediction
schema, :data:`effnet_runtime.portable.PREDICTION_SCHEMA`).
:func:`~effnet.predict.ray_engine.predict_on_ray` does the same on Ray Data, across the cores of
a machine or the nodes of a cluster, into a folder of part files (``effnet[ray]``).

The names below are imported on first use, so that Ray's worker processes, which import the
modules they run from this package, load neither PyTorch nor Ray Data unless they need them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FORMATS": "writers", "CsvWriter": "writers", "JsonWriter": "writers", "PredictionWriter": "writers",
    "TableWriter": "writers", "format_for": "writers", "open_writer": "writers",
    "ImageList": "files", "collect_images": "files",
    "PredictionSummary": "run", "predict_files": "run",
    "BulkSummary": "ray_engine", "predict_on_ray": "ray_engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
