"""Export to TorchScript, ``torch.export`` (.pt2) or ONNX, verified before the file appears.

Every export is written under a temporary name next to the destination, loaded back in its
own runtime (``torch.jit.load``, ``torch.export.load``, ONNX Runtime) and compared with the
eager model on several batch sizes. Only if the largest difference is within tolerance is it
renamed to the requested path; otherwise nothing is left behind and the error says by how much
it missed. The batch dimension is dynamic in every format; height and width are fixed at the
model's resolution (TF-'SAME' padding is then baked into the graph as constant pads).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, InputFileError
from ..files import atomic_write
from ..fuse import fold_batchnorm
from ..model import EfficientNet
from .runtime import check_format, load_runner
from .verify import FP32_TOLERANCE, MAX_TOLERANCE, ExportVerificationError, Verification, compare_to_reference

DEFAULT_OPSET = 18
MIN_OPSET = 13
DYNAMO_MIN_OPSET = 18
EXPORT_BATCH = 2
VERIFY_BATCHES = (EXPORT_BATCH, 1, 3)
METADATA_KEY = "effnet"
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class ExportResult:
    """A verified export: where it is, what it is, and how closely it matches eager PyTorch."""

    path: Path
    format: str
    opset: int | None
    folded_bn: bool
    verification: Verification

    @property
    def file_bytes(self) -> int:
        return self.path.stat().st_size

    def describe(self) -> str:
        details = [self.format] + ([f"opset {self.opset}"] if self.opset else []) + (
            ["BatchNorm folded"] if self.folded_bn else [])
        return (f"wrote {self.path} ({', '.join(details)}, {self.file_bytes / 1e6:.2f} MB)\n"
                f"verified in {self.verification.describe()}")


def input_shape(model: EfficientNet) -> tuple[int, int, int]:
    """(C, H, W) the model is exported for: its preprocessing's input size."""
    resolution = model.preprocessing.resolution
    return (model.in_chans, resolution, resolution)


def artifact_metadata(model: EfficientNet, format: str) -> dict:
    """What a deployed file carries about its model: name, classes and eval preprocessing."""
    return {
        "model_name": model.model_name,
        "format": format,
        "num_classes": model.num_classes,
        "class_names": model.class_names,
        "preprocessing": model.preprocessing.to_dict(),
        "input_shape": ["batch", *input_shape(model)],
    }


def check_opset(opset: int) -> int:
    highest = _highest_opset()
    if not MIN_OPSET <= opset <= highest:
        raise ConfigError(f"unsupported ONNX opset {opset}; choose one from {MIN_OPSET} to {highest} "
                          f"(default {DEFAULT_OPSET})")
    return opset


def check_export_options(format: str, opset: int = DEFAULT_OPSET, tolerance: float = FP32_TOLERANCE) -> None:
    """Refuse an unknown format, an unsupported ONNX opset or a tolerance that is not a positive
    number, before any work."""
    check_format(format)
    if format == "onnx":
        check_opset(opset)
    if not 0 < tolerance <= MAX_TOLERANCE:
        raise ConfigError(f"tolerance must be a positive number up to {MAX_TOLERANCE:g} (the largest |difference| "
                          f"of the logits accepted, default {FP32_TOLERANCE:g}), got {tolerance}")


def export_model(model: nn.Module, path: str | Path, format: str, *, opset: int = DEFAULT_OPSET,
                 fold_bn: bool = False, tolerance: float = FP32_TOLERANCE) -> ExportResult:
    """Export ``model`` to ``path`` as ``onnx``, ``torchscript`` or ``pt2``, verified in its runtime.

    ``fold_bn`` folds BatchNorm into the convs first (the comparison is still against the
    unfolded eager model). Raises :class:`~effnet.deploy.verify.ExportVerificationError` (a ValueError) if the
    artifact's logits differ from eager PyTorch by more than ``tolerance``; the destination is
    then left as it was.
    """
    check_export_options(format, opset, tolerance)
    path = Path(path)
    if not path.parent.is_dir():
        raise InputFileError(f"output folder {path.parent} does not exist")
    was_training = model.training
    model.eval()
    try:
        to_export = fold_batchnorm(model) if fold_bn else model
        shape = input_shape(model)
        example = torch.randn(EXPORT_BATCH, *shape)
        metadata = artifact_metadata(model, format)
        verifications = []

        def write_and_verify(partial: Path) -> None:
            _WRITERS[format](to_export, example, partial, metadata, opset)
            try:
                runner = load_runner(partial, format)
            except Exception as error:
                raise ExportVerificationError(f"the {format} export does not load in its runtime: {error}") from error
            verification = compare_to_reference(runner, model, shape, VERIFY_BATCHES, tolerance)
            if not verification.passed:
                raise ExportVerificationError(
                    f"{format} export rejected, {verification.describe()}; nothing was written to {path}")
            verifications.append(verification)

        atomic_write(path, write_and_verify)
        verification = verifications[0]
    finally:
        model.train(was_training)
    return ExportResult(path, format, opset if format == "onnx" else None, fold_bn, verification)


def read_artifact_metadata(path: str | Path, format: str) -> dict:
    """The model description :func:`export_model` stored inside an exported file."""
    check_format(format)
    path = Path(path)
    if format == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        raw = props.get(METADATA_KEY)
    else:
        extra = {f"{METADATA_KEY}.json": ""}
        if format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        else:
            torch.export.load(str(path), extra_files=extra)
        raw = extra[f"{METADATA_KEY}.json"] or None
    if raw is None:
        raise ConfigError(f"{path} carries no effnet metadata (was it written by effnet export?)")
    return json.loads(raw)


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of an eval-mode model with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream; pt2 is its successor
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})


def _write_pt2(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict, opset: int) -> None:
    torch.export.save(export_program(model, example), str(path),
                      extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict, opset: int) -> None:
    """ONNX via the torch.export-based exporter (opset >= 18) or the TorchScript-based one (older opsets)."""
    import onnx

    if opset >= DYNAMO_MIN_OPSET:
        torch.onnx.export(export_program(model, example), f=str(path), dynamo=True, opset_version=opset,
                          input_names=["input"], output_names=["logits"], external_data=False, verbose=False)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(path))
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if written != opset:
        raise ExportVerificationError(f"asked for ONNX opset {opset} but the exporter wrote opset {written}; "
                                      f"choose opset {DEFAULT_OPSET} or newer")
    for node in proto.graph.node:  # keep module scopes (for quantization), drop stack traces and local paths
        kept = [(p.key, p.value) for p in node.metadata_props if p.key == NAME_SCOPES_KEY]
        del node.metadata_props[:]
        for key, value in kept:
            node.metadata_props.add(key=key, value=value)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
    onnx.save(proto, str(path))


_WRITERS = {"onnx": write_onnx, "torchscript": _write_torchscript, "pt2": _write_pt2}


def _highest_opset() -> int:
    import onnx.defs

    return onnx.defs.onnx_opset_version()
