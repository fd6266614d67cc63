"""A model named by text only (a registry name, a checkpoint's path, a shipped folder's path),
loaded where it runs.

Bulk inference sends a :class:`ModelRef` to each of its worker processes, never a model object:
a process that is restarted after a crash loads the model again from the same name or path.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effnet_runtime.portable import ShippedFolderError, ShippedModel, softmax

from ..errors import ConfigError, InputFileError

SHIPPED_MANIFEST = "manifest.json"
"""The file that marks a folder written by ``effnet ship``."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to classify preprocessed ``(N, 3, H, W)`` float32 batches: its name, class
    names, preprocessing (a :meth:`effnet.Preprocessing.to_dict` mapping) and a function from a
    batch to its ``(N, classes)`` float32 probabilities."""

    name: str
    class_names: list[str]
    preprocessing: dict[str, Any]
    probabilities: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ModelRef:
    """The model of a bulk run, as ``effnet predict`` names it: ``model`` (a registry name, its
    default pretrained weights), ``checkpoint`` (one of our checkpoints, or a folder written by
    ``effnet ship``, run in its own runtime), or both (another library's weight file read as
    that architecture, with ``num_classes`` classes)."""

    model: str | None = None
    checkpoint: str | None = None
    num_classes: int | None = None

    @property
    def shipped(self) -> bool:
        """Whether ``checkpoint`` is a shipped folder."""
        return self.checkpoint is not None and (Path(self.checkpoint) / SHIPPED_MANIFEST).is_file()

    def load(self, device: str = "cpu", threads: int | None = None) -> LoadedModel:
        """The model on ``device`` (``cpu`` or ``cuda``; a shipped folder runs on the CPU) with
        ``threads`` threads for its operators."""
        if self.shipped:
            if self.model is not None or self.num_classes is not None:
                raise ConfigError(f"{self.checkpoint} is a shipped folder, which records its model: drop --model "
                                  "and --num-classes")
            if device != "cpu":
                raise ConfigError(f"{self.checkpoint} is a shipped folder, which runs on the CPU: drop "
                                  "--gpus-per-actor, or give the checkpoint it was shipped from")
            return _load_shipped(Path(str(self.checkpoint)), threads)
        return _load_torch(self, device, threads)


def _load_shipped(folder: Path, threads: int | None) -> LoadedModel:
    try:
        shipped = ShippedModel(folder, threads)
    except FileNotFoundError as error:
        raise InputFileError(f"{folder} is not a complete shipped folder: {error.filename} is missing (effnet ship "
                             "writes manifest.json, labels.json, preprocessing.json and the model file)") from None
    except (ShippedFolderError, KeyError, ValueError) as error:
        raise ConfigError(f"{folder} is not a usable shipped folder: {error}") from None
    except ImportError as error:
        raise ConfigError(f"{folder} runs in {_shipped_runtime(folder)}, which is not installed here ({error}); "
                          "install it on every node of the cluster") from None

    def probabilities(batch: np.ndarray) -> np.ndarray:
        return softmax(shipped(batch))

    return LoadedModel(shipped.name, list(shipped.labels), dict(shipped.preprocessing), probabilities)


def _shipped_runtime(folder: Path) -> str:
    """The runtime a shipped folder's manifest names ("its runtime" when unreadable)."""
    try:
        return str(json.loads((folder / SHIPPED_MANIFEST).read_text())["runtime"])
    except (OSError, ValueError, KeyError, TypeError):
        return "its runtime"


def _load_torch(ref: ModelRef, device: str, threads: int | None) -> LoadedModel:
    import torch

    from ..infer import class_name, load_classifier

    if threads:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a model without class names: classes are named by index (class_3)
        classifier = load_classifier(ref.model, ref.checkpoint, num_classes=ref.num_classes, device=device)

    def probabilities(batch: np.ndarray) -> np.ndarray:
        return classifier.probabilities(torch.from_numpy(batch)).numpy()

    count = classifier.num_classes
    if count is None:  # another library's architecture: its output's width
        size = classifier.preprocessing.resolution
        count = probabilities(np.zeros((1, 3, size, size), np.float32)).shape[1]
    names = [class_name(classifier.class_names, i) for i in range(count)]
    return LoadedModel(classifier.model_name, names, classifier.preprocessing.to_dict(), probabilities)
