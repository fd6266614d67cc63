"""From a checkpoint to a deployed, measured artifact: what ``effnet export`` and ``effnet quantize`` run."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, InputFileError
from ..factory import create_model
from ..model import EfficientNet
from ..registry import list_models
from ..weights.trained import load_trained_model
from .calibration import DEFAULT_CALIBRATION_IMAGES, calibration_images, labelled_loader, unlabelled_loader
from .compare import DeploymentRow, evaluate_runners, file_size, format_rows, measure_speeds
from .export import artifact_metadata, export_model, input_shape
from .quantize import (
    OrtRecipe,
    Pt2eRecipe,
    QatSettings,
    lower_for_cpu,
    quantize_aware_train,
    quantize_onnx,
    quantize_pt2e,
    save_pt2e,
)
from .runtime import load_runner, onnx_runner

QUANT_METHODS = ("ort-ptq", "pt2e-ptq", "qat")
INT8_SUFFIXES = {"ort-ptq": ".int8.onnx", "pt2e-ptq": ".int8.pt2", "qat": ".qat.int8.onnx"}

logger = logging.getLogger("effnet.deploy")


def load_deployable(checkpoint: str | Path) -> EfficientNet:
    """The eval-mode model behind ``checkpoint``: one of our ``.safetensors`` files, a training
    run's ``.pt`` checkpoint or run folder, or a registry name (with its pretrained weights)."""
    path = Path(checkpoint)
    if path.exists():
        try:
            model = load_trained_model(path)
        except ValueError as error:
            raise ConfigError(f"cannot deploy {path}: {error}") from None
    elif str(checkpoint) in list_models():
        model = create_model(str(checkpoint), pretrained=True)
    else:
        raise InputFileError(f"checkpoint {checkpoint} is neither a file, nor a run folder, nor a model name "
                             "(see effnet models)")
    return model.eval()


def default_output(checkpoint: str | Path, suffix: str) -> Path:
    """Where an export of ``checkpoint`` goes unless told: beside the file, or in the current folder."""
    path = Path(checkpoint)
    if path.is_dir():
        return path / f"model{suffix}"
    if path.exists():
        return path.with_name(path.name.split(".")[0] + suffix)
    return Path.cwd() / f"{checkpoint}{suffix}"


@dataclass(frozen=True)
class QuantizeOptions:
    """How ``effnet quantize`` runs: the method and its settings, threads, and what to measure."""

    method: str = "ort-ptq"
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    ort: OrtRecipe = field(default_factory=OrtRecipe)
    pt2e: Pt2eRecipe = field(default_factory=Pt2eRecipe)
    qat: QatSettings = field(default_factory=QatSettings)
    batch_size: int = 32
    threads: int | None = None
    measure_speed: bool = True

    def __post_init__(self) -> None:
        if self.method not in QUANT_METHODS:
            raise ConfigError(f"unknown quantization method {self.method!r}; choose one of {', '.join(QUANT_METHODS)}")


@dataclass(frozen=True)
class QuantizationReport:
    """The INT8 file written and the comparison of fp32 against INT8."""

    int8_path: Path
    rows: list[DeploymentRow]

    def table(self) -> str:
        return format_rows(self.rows)


def quantize_checkpoint(model: EfficientNet, calib_dir: str | Path, eval_dir: str | Path, out_path: str | Path,
                        options: QuantizeOptions = QuantizeOptions()) -> QuantizationReport:
    """Quantize ``model`` to INT8 at ``out_path`` and compare it with fp32 on ``eval_dir``.

    ``calib_dir``: images to calibrate on (for ``qat``, to train on), any folder; ``eval_dir``:
    a class-folder dataset. Both are checked before any long work starts. ``out_path`` ends in
    ``.onnx`` (ONNX Runtime QDQ; required for ``ort-ptq``) or ``.pt2`` (PT2E methods, run on
    oneDNN int8 kernels). The fp32 reference runs in the same runtime as the INT8 file.
    """
    model.eval()
    shape = input_shape(model)
    out_path = Path(out_path)
    if out_path.suffix not in (".onnx", ".pt2") or (options.method == "ort-ptq" and out_path.suffix != ".onnx"):
        allowed = ".onnx" if options.method == "ort-ptq" else ".onnx or .pt2"
        raise ConfigError(f"{options.method} writes {allowed} files; got {out_path}")
    if not out_path.parent.is_dir():
        raise InputFileError(f"output folder {out_path.parent} does not exist")
    calibration = calibration_images(calib_dir, model.preprocessing, options.calibration_images)
    loader = labelled_loader(eval_dir, model.preprocessing, model.class_names,
                             options.batch_size)
    onnx_out = out_path.suffix == ".onnx"
    label = {"ort-ptq": "QDQ", "pt2e-ptq": "PT2E PTQ", "qat": "PT2E QAT"}[options.method]
    with tempfile.TemporaryDirectory(prefix="effnet-quantize-") as work:
        fp32_path = Path(work, "fp32.onnx" if onnx_out else "fp32.pt2")
        export_model(model, fp32_path, "onnx" if onnx_out else "pt2", fold_bn=onnx_out)
        if options.method == "ort-ptq":
            logger.info("calibrating ONNX Runtime QDQ on %d images (%s)", len(calibration), options.ort.describe())
            quantize_onnx(fp32_path, out_path, calibration, options.ort)
        else:
            if options.method == "pt2e-ptq":
                logger.info("calibrating PT2E (X86 Inductor quantizer) on %d images", len(calibration))
                converted = quantize_pt2e(model, calibration, options.pt2e)
            else:
                batches = unlabelled_loader(calib_dir, model.preprocessing, options.batch_size)
                logger.info("quantization-aware training: %d epochs of %d batches", options.qat.epochs, len(batches))
                converted = quantize_aware_train(model, batches, options.qat, options.pt2e, progress=_log_qat)
            metadata = {**artifact_metadata(model, "onnx" if onnx_out else "pt2"), "quantization": options.method}
            save_pt2e(converted, out_path, shape, metadata)
        if onnx_out:
            runners = {"onnx fp32 (onnxruntime)": onnx_runner(fp32_path, options.threads),
                       f"onnx int8 {label} (onnxruntime)": onnx_runner(out_path, options.threads)}
        else:
            runners = {"pt2 fp32 (torch.export)": load_runner(fp32_path, "pt2"),
                       f"pt2 int8 {label} (oneDNN)": lower_for_cpu(converted)}
        sizes = [file_size(fp32_path), file_size(out_path)]
        logger.info("evaluating on %s", eval_dir)
        names = list(runners)
        accuracy = evaluate_runners(runners, loader, reference=names[0])
        speeds = measure_speeds(runners, shape) if options.measure_speed else {}
    rows = [DeploymentRow(name, size, speeds.get(name), accuracy[name])
            for name, size in zip(names, sizes, strict=True)]
    return QuantizationReport(out_path, rows)


def _log_qat(epoch: int, step: int, loss: float) -> None:
    if step % 20 == 0:
        logger.info("QAT epoch %d step %d: distillation loss %.4f", epoch + 1, step, loss)
