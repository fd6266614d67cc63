"""What the server runs: a model behind one interface, numpy in and out, whatever its runtime.

A :class:`Predictor` prepares a decoded picture with the model's own preprocessing and turns a
batch of prepared pictures into class probabilities. This package has one kind, a folder written
by ``effnet ship`` (:class:`ShippedPredictor`: ONNX Runtime or OpenVINO, numpy + Pillow
preprocessing); effnet adds PyTorch's. A :class:`Loader` names the function that makes
predictors by its import path, so that it can travel to worker processes.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from effnet_runtime.portable import ShippedModel, preprocess, softmax

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino", "torchscript": "pytorch_libtorch",
             "torch": "pytorch"}
"""The Open Inference Protocol's ``platform`` of each runtime (Triton's names where it has one)."""
SHIPPED_FILES = ("manifest.json", "labels.json", "preprocessing.json")
RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torchscript": "torch"}


class ModelLoadError(ValueError):
    """A model that cannot be loaded; the message names the folder or file and what to do."""


class Predictor(ABC):
    """A model ready to serve: its name, runtime, class names (``labels``, None when the model has
    none) and preprocessing (a ``preprocessing.json`` mapping), and a forward pass."""

    def __init__(self, name: str, runtime: str, labels: Sequence[str] | None, preprocessing: Mapping[str, Any],
                 num_classes: int) -> None:
        self.name = name
        self.runtime = runtime
        self.labels = list(labels) if labels is not None else None
        self.preprocessing: dict[str, Any] = json.loads(json.dumps(dict(preprocessing)))  # as preprocessing.json
        self.num_classes = num_classes

    @property
    def resolution(self) -> int:
        return int(self.preprocessing["resolution"])

    @abstractmethod
    def prepare(self, image: Image.Image, name: str, max_pixels: int) -> np.ndarray:
        """The model input (float32 ``3xHxW``) of a decoded RGB picture called ``name``; raises
        :class:`~effnet_runtime.portable.ImageReadError` for a picture that would resize to more
        than ``max_pixels``."""

    @abstractmethod
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, classes)`` (float32) of a prepared ``Nx3xHxW`` batch."""

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels is not None else f"class_{index}"

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers."""
        return {"name": self.name, "runtime": self.runtime, "num_classes": self.num_classes,
                "classes": self.labels, "preprocessing": self.preprocessing}


class ShippedPredictor(Predictor):
    """A folder written by ``effnet ship``, run in its runtime (:class:`~effnet_runtime.portable.ShippedModel`),
    its images prepared by :func:`effnet_runtime.portable.preprocess`."""

    def __init__(self, model: ShippedModel, name: str | None = None) -> None:
        super().__init__(name or model.name, model.manifest["runtime"], model.labels, model.preprocessing,
                         len(model.labels))
        self.model = model

    def prepare(self, image: Image.Image, name: str, max_pixels: int) -> np.ndarray:
        return preprocess(image, self.preprocessing, max_pixels, name)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.model(batch))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing: a shipped folder holds {', '.join(SHIPPED_FILES)} and the "
                             "model file (see effnet ship)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path} is not readable JSON ({error})") from None


def check_shipped_folder(folder: Path) -> str:
    """The runtime of the shipped ``folder``, after checking that its files are there and usable."""
    if not folder.is_dir():
        raise ModelLoadError(f"shipped folder {folder} does not exist (give a folder written by effnet ship)")
    manifest = _read_json(folder / "manifest.json")
    labels = _read_json(folder / "labels.json")
    preprocessing = _read_json(folder / "preprocessing.json")
    if not isinstance(manifest, dict) or not {"runtime", "model_file"} <= set(manifest):
        raise ModelLoadError(f"{folder / 'manifest.json'} needs runtime and model_file (see effnet ship)")
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        raise ModelLoadError(f"{folder / 'labels.json'} must hold the list of class names")
    required = {"resolution", "crop_pct", "interpolation", "mean", "std"}
    if not isinstance(preprocessing, dict) or not required <= set(preprocessing):
        raise ModelLoadError(f"{folder / 'preprocessing.json'} needs {', '.join(sorted(required))}")
    if not (folder / str(manifest["model_file"])).is_file():
        raise ModelLoadError(f"{folder / str(manifest['model_file'])} is missing (named by manifest.json)")
    return str(manifest["runtime"])


def load_shipped(folder: str | Path, threads: int | None = None, name: str | None = None) -> ShippedPredictor:
    """The predictor of a folder written by ``effnet ship``, with ``threads`` compute threads
    (None: the runtime's default) and ``name`` (default: the manifest's ``model_name``)."""
    folder = Path(folder)
    runtime = check_shipped_folder(folder)
    try:
        return ShippedPredictor(ShippedModel(folder, threads), name)
    except ImportError as error:
        package = RUNTIME_PACKAGES.get(runtime, runtime)
        raise ModelLoadError(f"{folder} runs in {runtime}, which is not installed here ({error}): pip install "
                             f"{package}") from None
    except Exception as error:  # the runtimes refuse a model file with exceptions of their own types
        text = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise ModelLoadError(f"{folder}: {runtime} cannot load the model ({text})") from None


@dataclass(frozen=True)
class Loader:
    """A function that makes predictors, named by import path (``"package.module:function"``) so
    that it can travel to worker processes, with keyword ``arguments``. Called with no argument
    for the one model of a server, or with a version folder of a repository."""

    function: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *folder: Path) -> Predictor:
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)(*folder, **self.arguments)
