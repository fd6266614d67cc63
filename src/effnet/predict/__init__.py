"""``effnet predict`` over many files: collecting them, classifying them, writing the results.

:func:`~effnet.predict.files.collect_images` expands files, folders and globs;
:func:`~effnet.predict.run.predict_files` classifies them with an :class:`effnet.Classifier`
into a writer of :mod:`effnet.predict.writers` (table, CSV, or JSON records of the prediction
schema, :data:`effnet_runtime.portable.PREDICTION_SCHEMA`).
"""

from .files import ImageList, collect_images
from .run import PredictionSummary, predict_files
from .writers import FORMATS, CsvWriter, JsonWriter, PredictionWriter, TableWriter, format_for, open_writer

__all__ = ["FORMATS", "CsvWriter", "ImageList", "JsonWriter", "PredictionSummary", "PredictionWriter", "TableWriter",
           "collect_images", "format_for", "open_writer", "predict_files"]
