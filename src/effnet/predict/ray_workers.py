"""What a bulk run executes in Ray's worker processes: reading and preparing images (tasks) and
classifying them (actors, one model each).

:func:`read_images` needs neither PyTorch nor a model: it decodes with
:func:`effnet_runtime.portable.decode_image` and prepares with
:func:`effnet_runtime.portable.preprocess` (effnet's eval transform in numpy), so the reading
workers stay small. An input that cannot be read gets its error and a blank image; the run goes on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from effnet_runtime.portable import ImageReadError, decode_image, prediction_record, preprocess, read_error, top_classes

from .model_ref import ModelRef
from .parts import predictions_table


def read_images(batch: dict[str, np.ndarray], preprocessing: dict[str, Any]) -> dict[str, np.ndarray]:
    """A batch of inputs (``path``: as given, ``location``: a local path's bytes or a URI that
    pyarrow's file systems open) as model inputs: ``path``, ``image`` (float32 ``(N, 3, H, W)``)
    and ``error`` ("" when the image is usable)."""
    size = preprocessing["resolution"]
    paths = [str(path) for path in batch["path"]]
    images = np.zeros((len(paths), 3, size, size), dtype=np.float32)
    errors = [""] * len(paths)
    for i, (path, location) in enumerate(zip(paths, batch["location"], strict=True)):
        try:
            images[i] = preprocess(decode_image(_read_bytes(bytes(location)), path), preprocessing, name=path)
        except Exception as error:  # one bad input must not stop a long run: it gets its error
            errors[i] = _reason(path, error)
    return {"path": np.array(paths, dtype=object), "image": images, "error": np.array(errors, dtype=object)}


def _read_bytes(location: bytes) -> bytes:
    text = os.fsdecode(location)
    if "://" not in text:
        with open(text, "rb") as handle:
            return handle.read()
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(text)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def _reason(path: str, error: Exception) -> str:
    """The error text of an input, as ``effnet predict`` reports it."""
    if isinstance(error, OSError):
        error = read_error(Path(path), error)
    if isinstance(error, ImageReadError):
        return error.reason
    return f"{type(error).__name__}: {error}"


class BatchPredictor:
    """A Ray Data actor: one copy of the model (loaded from ``model``, a name or path), turning
    prepared batches into prediction rows (:data:`effnet.predict.parts.PREDICTION_ARROW_SCHEMA`)."""

    def __init__(self, model: ModelRef, top_k: int, threads: int, device: str = "cpu") -> None:
        self.model = model.load(device, threads)
        self.top_k = min(top_k, len(self.model.class_names))

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        errors = [str(error) for error in batch["error"]]
        usable = [i for i, error in enumerate(errors) if not error]
        ranked: dict[int, list[tuple[int, str, float]]] = {}
        if usable:
            probabilities = self.model.probabilities(np.ascontiguousarray(batch["image"][usable]))
            ranked = {i: top_classes(row, self.model.class_names, self.top_k)
                      for i, row in zip(usable, probabilities, strict=True)}
        return predictions_table([prediction_record(str(path), self.model.name, ranked.get(i, ()), errors[i] or None)
                                  for i, path in enumerate(batch["path"])])
