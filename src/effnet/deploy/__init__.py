"""Deployment: BatchNorm folding, verified exports (ONNX, TorchScript, torch.export) and INT8.

- :func:`~effnet.fuse.fold_batchnorm` (from :mod:`effnet.fuse`, shared with :mod:`effnet.accelerate`): fold
  BatchNorm into the convs (same outputs).
- :mod:`.export`: export to ``onnx``, ``torchscript`` or ``pt2``, verified in the format's own
  runtime before the file appears.
- :mod:`.quantize`: INT8 by ONNX Runtime QDQ, torchao PT2E, or quantization-aware training,
  with sensitive layer groups optionally kept in float.
- :mod:`.calibration`, :mod:`.compare`, :mod:`.runtime`, :mod:`.verify`: the images, the
  measurements and the runtimes behind them.
- :mod:`.pipeline`: what ``effnet export`` and ``effnet quantize`` run.
- :mod:`.openvino`: OpenVINO as a CPU runtime (fp32, bf16 and INT8, precision always explicit).
- :mod:`.environment`: the CPU and library versions a measurement depends on.

The two workflows built on these blocks are packages of their own: :mod:`effnet.ship` (a
checkpoint to a verified deployment folder) and :mod:`effnet.pick` (the most accurate
candidate within a budget, measured on this machine).
"""

from ..fuse import fold_batchnorm
from .compare import Accuracy, DeploymentRow, evaluate_runners, format_rows, measure_speed
from .export import ExportResult, export_model, read_artifact_metadata
from .pipeline import QuantizationReport, QuantizeOptions, load_deployable, quantize_checkpoint
from .quantize import (
    LAYER_GROUPS,
    OrtRecipe,
    Pt2eRecipe,
    QatSettings,
    lower_for_cpu,
    quantize_aware_train,
    quantize_onnx,
    quantize_pt2e,
    save_pt2e,
)
from .runtime import FORMATS, Runner, load_runner, onnx_runner, torch_runner
from .verify import ExportVerificationError, Verification

__all__ = [
    "FORMATS",
    "LAYER_GROUPS",
    "Accuracy",
    "DeploymentRow",
    "ExportResult",
    "ExportVerificationError",
    "OrtRecipe",
    "Pt2eRecipe",
    "QatSettings",
    "QuantizationReport",
    "QuantizeOptions",
    "Runner",
    "Verification",
    "evaluate_runners",
    "export_model",
    "fold_batchnorm",
    "format_rows",
    "load_deployable",
    "load_runner",
    "lower_for_cpu",
    "measure_speed",
    "onnx_runner",
    "quantize_aware_train",
    "quantize_checkpoint",
    "quantize_onnx",
    "quantize_pt2e",
    "read_artifact_metadata",
    "save_pt2e",
    "torch_runner",
]
