"""The predictors that need PyTorch, for :mod:`effnet_runtime.serve`'s server (numpy in and out).

- :class:`TorchPredictor`: an :class:`effnet.infer.Classifier` (a registry model or one of our
  checkpoints); pictures are prepared by the classifier's eval transform, as ``effnet predict``
  prepares them, so both give the same classes and probabilities;
- :class:`ExportedPredictor`: the same model exported at start-up (ONNX or TorchScript,
  verified against eager PyTorch by :func:`effnet.deploy.export.export_model`) and run in
  onnxruntime, openvino or torchscript, pictures prepared the same way;
- a shipped folder runs in :func:`effnet_runtime.serve.predictor.load_shipped` (the torch-free
  server's code, so both servers answer alike).

:func:`load_predictor` is what ``effnet serve --model/--checkpoint/--artifact`` loads,
:func:`load_version` a version folder of ``effnet serve --repository``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from effnet_runtime.portable import check_resized_pixels, softmax
from effnet_runtime.serve.predictor import Predictor, check_shipped_folder, load_shipped

from ..deploy.export import export_model
from ..deploy.runtime import Runner, load_runner
from ..errors import ConfigError
from ..infer import Classifier, load_classifier
from . import RUNTIMES

CHECKPOINT_FILE = "model.safetensors"
"""The file that makes a repository version folder a checkpoint (otherwise: a shipped folder)."""


class TorchPredictor(Predictor):
    """Eager PyTorch through an :class:`effnet.infer.Classifier` (the code of ``effnet predict``)."""

    def __init__(self, classifier: Classifier) -> None:
        if classifier.num_classes is None:
            raise ConfigError(f"{classifier.model_name} has no class count to serve; give it class names")
        super().__init__(classifier.model_name, "torch", classifier.class_names, classifier.preprocessing.to_dict(),
                         int(classifier.num_classes))
        self.classifier = classifier

    def prepare(self, image: Image.Image, name: str, max_pixels: int) -> np.ndarray:
        check_resized_pixels(Path(name), image.width, image.height, self.preprocessing, max_pixels)
        return self.classifier.preprocess(image).numpy()

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.classifier.probabilities(torch.from_numpy(batch)).numpy()


class ExportedPredictor(TorchPredictor):
    """A classifier's model exported to ``runtime`` and run there by ``runner`` (logits, then softmax)."""

    def __init__(self, classifier: Classifier, runner: Runner, runtime: str) -> None:
        super().__init__(classifier)
        self.runtime = runtime
        self.runner = runner

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.runner(batch))


def openvino_runner(path: str | Path) -> Runner:
    """A runner over an ONNX file compiled for the CPU by OpenVINO, in float32 (OpenVINO would
    otherwise pick bfloat16 on CPUs that have it, shifting the probabilities)."""
    try:
        import openvino
    except ImportError:
        raise ConfigError("the openvino runtime needs the openvino package: pip install openvino, or serve with "
                          "--runtime onnxruntime") from None
    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return Runner("openvino", lambda batch: compiled(batch)[0])


def export_predictor(classifier: Classifier, runtime: str) -> ExportedPredictor:
    """``classifier``'s model exported (ONNX, or TorchScript) and loaded in ``runtime``."""
    format = "torchscript" if runtime == "torchscript" else "onnx"
    with tempfile.TemporaryDirectory(prefix="effnet-serve-") as folder:
        path = export_model(classifier.model.cpu(), Path(folder) / f"model.{format}", format).path
        runner = openvino_runner(path) if runtime == "openvino" else load_runner(path, format)
    return ExportedPredictor(classifier, runner, runtime)


def load_predictor(model: str | None = None, checkpoint: str | None = None, artifact: str | None = None,
                   runtime: str | None = None, device: str = "auto", threads: int | None = None) -> Predictor:
    """The predictor ``effnet serve`` runs: a shipped folder (``artifact``), or a registry model
    and/or checkpoint as ``effnet predict`` reads them, in ``runtime`` (default: torch, or the
    shipped folder's), with ``threads`` compute threads. Runtimes other than torch run on the CPU."""
    if runtime is not None and runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime not in (None, "torch") and device not in ("auto", "cpu"):
        raise ConfigError(f"the {runtime} runtime runs on the CPU here; drop --device {device} or use --runtime torch")
    if threads is not None:
        torch.set_num_threads(threads)
    if artifact is not None:
        if model is not None or checkpoint is not None:
            raise ConfigError("give either --artifact or --model/--checkpoint, not both")
        shipped = check_shipped_folder(Path(artifact))
        if runtime not in (None, shipped):
            raise ConfigError(f"{artifact} was shipped for {shipped}, not {runtime}: drop --runtime or ship it again "
                              f"for {runtime}")
        return load_shipped(artifact, threads)
    classifier = load_classifier(model, checkpoint, device="cpu" if runtime not in (None, "torch") else device)
    if runtime in (None, "torch"):
        return TorchPredictor(classifier)
    return export_predictor(classifier, runtime)


def load_version(folder: Path, device: str = "auto", threads: int | None = None) -> Predictor:
    """A repository version folder: a checkpoint (``model.safetensors``) run in PyTorch on
    ``device``, or a shipped folder in its runtime."""
    if threads is not None:
        torch.set_num_threads(threads)
    if (folder / CHECKPOINT_FILE).is_file():
        return TorchPredictor(load_classifier(checkpoint=folder / CHECKPOINT_FILE, device=device))
    return load_shipped(folder, threads)
