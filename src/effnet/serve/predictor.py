"""What the server runs: a model behind one interface, whatever its runtime.

A :class:`Predictor` prepares a decoded picture exactly as ``effnet predict`` does (the
model's own eval preprocessing, :func:`effnet.infer.prepare_image`) and turns a batch of
prepared pictures into class probabilities. Backends:

- ``torch``: an :class:`effnet.infer.Classifier` (a registry model or one of our checkpoints);
- ``onnxruntime``, ``openvino``, ``torchscript``: an exported file, either from a shipped
  folder (``manifest.json``, ``labels.json``, ``preprocessing.json`` beside the model file) or
  exported from the checkpoint at start-up (verified against eager PyTorch, see
  :func:`effnet.deploy.export.export_model`).
"""

from __future__ import annotations

import json
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.transforms import eval_transforms
from ..deploy.export import export_model
from ..deploy.runtime import Runner, load_runner
from ..description import Preprocessing
from ..errors import ConfigError, InputFileError
from ..infer import Classifier, load_classifier, prepare_image

RUNTIMES = ("torch", "onnxruntime", "openvino", "torchscript")
ARTIFACT_FILES = ("manifest.json", "labels.json", "preprocessing.json")


class Predictor(ABC):
    """A model ready to serve: its name, runtime, classes and preprocessing, and a forward pass."""

    def __init__(self, name: str, runtime: str, class_names: Sequence[str] | None,
                 preprocessing: Preprocessing) -> None:
        self.name = name
        self.runtime = runtime
        self.class_names = list(class_names) if class_names is not None else None
        self.preprocessing = preprocessing
        self.transform = eval_transforms(preprocessing)

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """How many classes the model scores."""

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """The model input (float ``CxHxW``) of a decoded RGB picture."""
        return prepare_image(image, self.transform)

    @abstractmethod
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, classes)`` (float32, CPU) of a prepared ``NxCxHxW`` batch."""

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers."""
        return {"name": self.name, "runtime": self.runtime, "num_classes": self.num_classes,
                "classes": self.class_names, "preprocessing": self.preprocessing.to_dict()}


class TorchPredictor(Predictor):
    """Eager PyTorch through an :class:`effnet.infer.Classifier` (same code as ``effnet predict``)."""

    def __init__(self, classifier: Classifier) -> None:
        name = getattr(classifier.model, "model_name", type(classifier.model).__name__)
        super().__init__(name, "torch", classifier.class_names, classifier.preprocessing)
        self.classifier = classifier
        self.transform = classifier.transform

    @property
    def num_classes(self) -> int:
        return int(self.classifier.num_classes)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        return self.classifier.probabilities(batch)


class RunnerPredictor(Predictor):
    """An exported model in its runtime (:class:`effnet.deploy.runtime.Runner`): logits, then softmax here."""

    def __init__(self, runner: Runner, name: str, runtime: str, class_names: Sequence[str] | None,
                 preprocessing: Preprocessing, num_classes: int) -> None:
        super().__init__(name, runtime, class_names, preprocessing)
        self.runner = runner
        self._num_classes = num_classes

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        logits = torch.from_numpy(self.runner(batch.numpy()))
        return logits.float().softmax(dim=1)


def openvino_runner(path: str | Path) -> Runner:
    """A runner over an ONNX or OpenVINO IR file compiled for the CPU by OpenVINO, in float32
    (OpenVINO would otherwise pick bfloat16 on CPUs that have it, shifting the probabilities)."""
    try:
        import openvino
    except ImportError:
        raise ConfigError("the openvino runtime needs the openvino package: pip install openvino, "
                          "or serve with --runtime onnxruntime") from None
    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def predict(batch):
        return compiled(batch)[0]

    return Runner("openvino", predict)


def runtime_runner(path: str | Path, runtime: str) -> Runner:
    """The runner of an exported file in ``runtime`` (onnxruntime, openvino or torchscript)."""
    if runtime == "onnxruntime":
        return load_runner(path, "onnx")
    if runtime == "torchscript":
        return load_runner(path, "torchscript")
    if runtime == "openvino":
        return openvino_runner(path)
    raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputFileError(f"{path} is missing: a shipped folder holds {', '.join(ARTIFACT_FILES)} "
                             "and the model file (see effnet ship)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid JSON ({error})") from None


def load_artifact(folder: str | Path, runtime: str | None = None) -> RunnerPredictor:
    """The predictor of a shipped folder: ``manifest.json`` (``runtime``, ``model_file``,
    ``model_name``), ``labels.json`` (class names) and ``preprocessing.json``. ``runtime``, when
    given, must be the manifest's."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"shipped folder {folder} does not exist")
    manifest = _read_json(folder / "manifest.json")
    labels = _read_json(folder / "labels.json")
    try:
        preprocessing = Preprocessing.from_dict(_read_json(folder / "preprocessing.json"))
        shipped_runtime, model_file = manifest["runtime"], manifest["model_file"]
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{folder} is not a usable shipped folder: {error} (manifest.json needs runtime and "
                          "model_file; preprocessing.json the fields of effnet.Preprocessing)") from None
    if runtime not in (None, shipped_runtime):
        raise ConfigError(f"{folder} was shipped for {shipped_runtime}, not {runtime}: drop --runtime or ship "
                          f"it again for {runtime}")
    if not isinstance(labels, list) or not labels:
        raise ConfigError(f"{folder / 'labels.json'} must hold the list of class names")
    model_path = folder / model_file
    if not model_path.is_file():
        raise InputFileError(f"{model_path} is missing (named by {folder / 'manifest.json'})")
    runner = runtime_runner(model_path, shipped_runtime)
    name = str(manifest.get("model_name") or folder.name)
    return RunnerPredictor(runner, name, shipped_runtime, labels, preprocessing, len(labels))


def export_predictor(classifier: Classifier, runtime: str) -> RunnerPredictor:
    """``classifier``'s model exported (ONNX, or TorchScript) and loaded in ``runtime``."""
    model = classifier.model.cpu()
    format = "torchscript" if runtime == "torchscript" else "onnx"
    with tempfile.TemporaryDirectory(prefix="effnet-serve-") as folder:
        result = export_model(model, Path(folder) / f"model.{format}", format)
        runner = runtime_runner(result.path, runtime)
    return RunnerPredictor(runner, model.model_name, runtime, classifier.class_names, classifier.preprocessing,
                           model.num_classes)


def load_predictor(model: str | None = None, checkpoint: str | Path | None = None, artifact: str | Path | None = None,
                   runtime: str | None = None, device: str = "auto") -> Predictor:
    """The predictor ``effnet serve`` runs: a shipped folder (``artifact``), or a registry model
    and/or checkpoint as ``effnet predict`` reads them, in ``runtime`` (default: torch, or the
    shipped folder's). Runtimes other than torch run on the CPU."""
    if runtime is not None and runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime not in (None, "torch") and device not in ("auto", "cpu"):
        raise ConfigError(f"the {runtime} runtime runs on the CPU here; drop --device {device} or use --runtime torch")
    if artifact is not None:
        if model is not None or checkpoint is not None:
            raise ConfigError("give either --artifact or --model/--checkpoint, not both")
        if runtime == "torch":
            raise ConfigError("a shipped folder runs in its own runtime (see its manifest.json); drop --runtime torch")
        return load_artifact(artifact, runtime)
    classifier = load_classifier(model, checkpoint, device="cpu" if runtime not in (None, "torch") else device)
    if runtime in (None, "torch"):
        return TorchPredictor(classifier)
    return export_predictor(classifier, runtime)
