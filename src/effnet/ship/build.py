"""``effnet ship``: a checkpoint to a verified, self-contained deployment folder.

BatchNorm is folded, the network exported to ONNX (verified against eager PyTorch), then
turned into the target's file (ONNX Runtime fp32 or INT8, OpenVINO fp32, bf16 or INT8,
TorchScript), run in its own runtime on the ``--eval`` images beside the fp32 reference, and
only shipped if it passes the gate (:func:`effnet.ship.plan.gate`: at most ``max_drop`` top-1
points lost, at least ``min_agreement`` % of fp32's answers kept, a top-1 above chance plus 5
points; an fp32 model at chance level is refused before anything is built). Latency and
throughput are timed with fp32 and the shipped model in turns, round after round. The folder holds:

- the model file (``model.onnx``, ``model.xml`` + ``model.bin``, or ``model.ts``);
- ``manifest.json`` (runtime, model file, name, target, precision, input size, measured top-1),
  ``labels.json`` (class names), ``preprocessing.json``;
- ``predict.py``, a standalone classifier needing only the runtime, numpy and Pillow, with
  ``effnet_portable.py`` (a copy of :mod:`effnet_runtime.portable`: effnet's decoding and preprocessing);
- ``report.md`` and ``report.html`` (see :mod:`effnet.ship.report`), ``confusion.png``.

Nothing appears in the destination until every check has passed, and then all at once: the
folder is built whole in a work folder beside it and renamed into place in one step
(:func:`effnet.files.publish_folder`), so a ship killed at any moment leaves no folder that looks
shipped; its work folder is removed by the next ship into the same parent folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from effnet_runtime import portable

from ..deploy.calibration import calibration_images, labelled_loader, unlabelled_loader
from ..deploy.compare import Accuracy, DeploymentRow, Speed, accuracy_of, collect_logits, measure_speeds
from ..deploy.edge import EDGE_RUNTIMES
from ..deploy.environment import library_versions
from ..deploy.export import artifact_metadata, export_model, input_shape
from ..deploy.quantize import OrtRecipe, Pt2eRecipe, quantize_aware_train, quantize_onnx, save_pt2e
from ..deploy.runtime import Runner, load_runner, onnx_runner
from ..deploy.verify import FP32_TOLERANCE, ExportVerificationError, compare_to_reference
from ..errors import ConfigError, InputFileError
from ..files import atomic_write, publish_folder, work_folder
from ..model import EfficientNet
from .plan import (
    FP32_FALLBACK,
    Attempt,
    Evaluation,
    Recipe,
    ShipOptions,
    ShipRefused,
    ShipResult,
    Target,
    below_floor,
    gate,
    recipes,
    target,
)
from .report import write_reports

logger = logging.getLogger("effnet.ship")

WORK_PREFIX = ".effnet-ship-"
"""The work folders beside ``--out``: the folder is built whole in one, then renamed into place."""


def ship(model: EfficientNet, calib_dir: str | Path | None, eval_dir: str | Path, out_dir: str | Path,
         options: ShipOptions = ShipOptions()) -> ShipResult:
    """Build, verify, measure and write the deployment folder ``out_dir`` (see the module docstring).

    ``calib_dir`` (any folder of images) is needed for INT8 targets and for the remedies that
    quantize; ``eval_dir`` is a class-folder dataset with the model's classes. Raises
    :class:`~effnet.ship.plan.ShipRefused` if the fp32 model is at chance level on it, or no recipe
    tried passes the gate.
    """
    model.eval()
    out_dir = Path(out_dir)
    _check_destination(out_dir)
    plan = recipes(options)
    if any(r.target.int8 for r in plan) and calib_dir is None:
        raise ConfigError(f"target {options.target} quantizes to INT8 and needs calibration images: pass --calib DIR")
    if any(r.target.runtime == "openvino" for r in plan):
        from ..deploy.openvino import bf16_supported

        if any(r.target.precision == "bf16" for r in plan) and not bf16_supported():
            raise ConfigError("target openvino-bf16 is unavailable: this CPU has no bf16 (AVX-512 BF16 or AMX); "
                              "ship --target openvino (fp32) instead")
    for runtime in {r.target.runtime for r in plan} & set(EDGE_RUNTIMES):
        from ..deploy.edge import require_edge

        require_edge(runtime)
    loader = labelled_loader(eval_dir, model.preprocessing, model.class_names, options.batch_size)
    calibration = (calibration_images(calib_dir, model.preprocessing, options.calibration_images)
                   if any(r.target.int8 for r in plan) else None)
    with work_folder(out_dir.parent, WORK_PREFIX) as work:
        fp32_onnx = work / "fp32.onnx"
        export_model(model, fp32_onnx, "onnx", fold_bn=True)
        reference = onnx_runner(fp32_onnx, options.threads, name="onnxruntime fp32")
        logger.info("evaluating the fp32 reference on %s", eval_dir)
        reference_logits, targets = _logits(reference, loader)
        reference_accuracy = accuracy_of(reference_logits, reference_logits, targets)
        at_chance = below_floor(reference_accuracy.top1, options, model.num_classes)
        if at_chance:
            raise ShipRefused(f"refused to ship {model.model_name}: on {eval_dir} the fp32 model itself is no better "
                              f"than a constant guess ({at_chance}); nothing was written. Check that the checkpoint is "
                              f"the trained one and that {eval_dir} holds labelled images of its classes; --min-top1 0 "
                              "ships it anyway")
        attempts: list[Attempt] = []
        for index, recipe in enumerate(plan):
            folder = work / f"attempt-{index}"
            folder.mkdir()
            logger.info("building %s", recipe.describe())
            runner = _build(recipe, model, fp32_onnx, calibration, calib_dir, folder, options)
            logits, _ = _logits(runner, loader)
            accuracy = accuracy_of(logits, reference_logits, targets)
            drop = 100 * (reference_accuracy.top1 - accuracy.top1)
            attempts.append(Attempt(recipe, accuracy, drop, gate(accuracy, drop, options, model.num_classes)))
            logger.info("%s: top-1 %.2f%% (fp32 %.2f%%), drop %.2f points, agreement %.2f%%", recipe.describe(),
                        100 * accuracy.top1, 100 * reference_accuracy.top1, drop, 100 * accuracy.agreement)
            if attempts[-1].accepted:
                break
        else:
            raise ShipRefused(_refusal(model, options, attempts, reference_accuracy, eval_dir))
        shape = input_shape(model)
        speeds: dict[str, Speed | None] = {"reference": None, "shipped": None}
        if options.measure_speed:
            logger.info("measuring latency and throughput (fp32 and shipped in turns)")
            speeds = measure_speeds({"reference": reference, "shipped": runner}, shape)
        model_files = _model_files(folder, recipe.target)
        reference_row = DeploymentRow("fp32 reference (onnxruntime)", fp32_onnx.stat().st_size, speeds["reference"],
                                      reference_accuracy)
        shipped_row = DeploymentRow(f"shipped: {recipe.describe()}", sum(p.stat().st_size for p in model_files),
                                    speeds["shipped"], accuracy)
        evaluation = Evaluation(_class_names(model), [path for path, _ in loader.dataset.samples], targets,
                                reference_logits, logits)
        manifest = _manifest(model, recipe, accuracy, reference_accuracy)
        if (folder / "conversion.json").is_file():  # an edge file: its input, ops and float islands
            manifest.update(json.loads((folder / "conversion.json").read_text()))
        result = ShipResult(out_dir, model.model_name, recipe, attempts, reference_row, shipped_row, evaluation,
                            manifest)
        staged = work / "folder"
        staged.mkdir()
        for path in model_files:
            path.rename(staged / path.name)
        _write_json(staged / "manifest.json", manifest)
        _write_json(staged / "labels.json", evaluation.class_names)
        _write_json(staged / "preprocessing.json", model.preprocessing.to_dict())
        for source, name in ((Path(__file__).with_name("standalone_predict.py"), "predict.py"),
                             (Path(portable.__file__), "effnet_portable.py")):
            shutil.copyfile(source, staged / name)
        write_reports(result, options, eval_dir, staged)
        publish_folder(staged, out_dir)
    return result


def _check_destination(out_dir: Path) -> None:
    if not out_dir.parent.is_dir():
        raise InputFileError(f"the folder {out_dir.parent} that should hold {out_dir.name} does not exist")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} already exists and is not an empty folder; choose a new --out "
                          "(a ship folder is written whole, never merged into another)")


def _logits(runner: Runner, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    logits, targets = collect_logits({runner.name: runner}, loader)
    return logits[runner.name], targets


def _build(recipe: Recipe, model: EfficientNet, fp32_onnx: Path, calibration: torch.Tensor | None,
           calib_dir: str | Path | None, folder: Path, options: ShipOptions) -> Runner:
    """Write ``recipe``'s model file(s) into ``folder`` and return a runner over them in their runtime."""
    target = recipe.target
    if target.runtime in EDGE_RUNTIMES:
        return _build_edge(recipe, model, calibration, folder, options)
    if target.runtime == "torchscript":
        path = folder / target.model_file
        export_model(model, path, "torchscript", fold_bn=True)
        return load_runner(path, "torchscript", options.threads)
    onnx_path = folder / "model.onnx"
    if not target.int8:
        shutil.copyfile(fp32_onnx, onnx_path)
    elif recipe.method == "qat":
        batches = unlabelled_loader(calib_dir, model.preprocessing, options.batch_size)
        converted = quantize_aware_train(model, batches, options.qat, Pt2eRecipe(keep_float=recipe.keep_float))
        save_pt2e(converted, onnx_path, input_shape(model),
                  {**artifact_metadata(model, "onnx"), "quantization": "qat"})
    else:
        quantize_onnx(fp32_onnx, onnx_path, calibration, OrtRecipe(keep_float=recipe.keep_float))
    if target.runtime == "onnxruntime":
        return onnx_runner(onnx_path, options.threads, name=f"onnxruntime {target.precision}")
    from ..deploy.openvino import convert_onnx, openvino_runner

    xml = convert_onnx(onnx_path, folder / target.model_file)
    onnx_path.unlink()
    runner = openvino_runner(xml, "bf16" if target.precision == "bf16" else "fp32", options.threads)
    if target.precision == "fp32":
        verification = compare_to_reference(runner, model, input_shape(model), tolerance=FP32_TOLERANCE)
        if not verification.passed:
            raise ExportVerificationError(f"OpenVINO conversion rejected, {verification.describe()}")
    return runner


def _build_edge(recipe: Recipe, model: EfficientNet, calibration: torch.Tensor | None, folder: Path,
                options: ShipOptions) -> Runner:
    """An ExecuTorch or LiteRT file (:mod:`effnet.deploy.edge`), run in its runtime; an fp32 file
    must reproduce eager PyTorch."""
    from ..deploy.edge import edge_runner, write_edge

    target = recipe.target
    written = write_edge(model, folder / target.model_file, target.runtime,
                         calibration if target.int8 else None, recipe.keep_float)
    _write_json(folder / "conversion.json", written.summary())
    runner = edge_runner(written.path, target.runtime, options.threads, name=f"{target.runtime} {target.precision}")
    if not target.int8:
        verification = compare_to_reference(runner, model, input_shape(model), tolerance=FP32_TOLERANCE)
        if not verification.passed:
            raise ExportVerificationError(f"{target.name} conversion rejected, {verification.describe()}")
    return runner


def _model_files(folder: Path, target: Target) -> list[Path]:
    main = folder / target.model_file
    return [main.with_suffix(".bin"), main] if target.runtime == "openvino" else [main]


def _class_names(model: EfficientNet) -> list[str]:
    return list(model.class_names) if model.class_names else [f"class_{i}" for i in range(model.num_classes)]


def _manifest(model: EfficientNet, recipe: Recipe, accuracy: Accuracy, reference: Accuracy) -> dict:
    target = recipe.target
    manifest = {
        "runtime": target.runtime, "model_file": target.model_file, "model_name": model.model_name,
        "target": target.name, "precision": target.precision, "resolution": model.preprocessing.resolution,
        "input_size": model.preprocessing.resolution,  # the old name of resolution, kept for one release
        "num_classes": model.num_classes, "keep_float": list(recipe.keep_float),
        "quantization": {"ptq": "onnxruntime QDQ static", "qat": "PT2E QAT"}.get(recipe.method),
        "top1": accuracy.top1, "fp32_top1": reference.top1, "agreement": accuracy.agreement,
        "sqnr_db": accuracy.sqnr_db if np.isfinite(accuracy.sqnr_db) else None,
        "eval_images": accuracy.count, "versions": library_versions(),
    }
    if target.runtime == "openvino":
        manifest["inference_precision"] = "bf16" if target.precision == "bf16" else "f32"
    if target.runtime in EDGE_RUNTIMES:
        from ..deploy.edge import QUANTIZATION

        manifest["quantization"] = QUANTIZATION[target.runtime] if target.int8 else None
    return manifest


def _write_json(path: Path, data: object) -> None:
    atomic_write(path, lambda temp: temp.write_text(json.dumps(data, indent=2) + "\n"))


def _refusal(model: EfficientNet, options: ShipOptions, attempts: list[Attempt], reference: Accuracy,
             eval_dir: str | Path) -> str:
    first = attempts[0]
    lines = [f"refused to ship {model.model_name} as {options.target}: on {eval_dir} (fp32 "
             f"{100 * reference.top1:.2f}% -> {100 * first.accuracy.top1:.2f}%, agreement "
             f"{100 * first.accuracy.agreement:.2f}%) {'; '.join(first.problems)}; nothing was written."]
    if len(attempts) > 1:
        lines.append("tried: " + "; ".join(f"{a.recipe.describe()}: drop {a.drop_points:.2f}, agreement "
                                           f"{100 * a.accuracy.agreement:.2f}%" for a in attempts))
    remedies = []
    if target(options.target).int8:
        remedies += ["--keep-float stem (the stem's folded weights amplify the input's quantization noise)",
                     "quantization-aware training (effnet quantize --method qat, or --auto-remedy)"]
        if "lite" not in model.model_name:
            remedies.append("a Lite variant (ReLU6, no squeeze-excitation: designed to quantize)")
    if options.target in FP32_FALLBACK:
        remedies.append(f"--target {FP32_FALLBACK[options.target]} (fp32)")
    remedies.append("a larger --max-drop" if any("--max-drop" in p for p in first.problems) else
                    "a lower --min-agreement" if any("--min-agreement" in p for p in first.problems) else
                    "a lower --min-top1")
    lines.append("remedies: " + "; ".join(remedies) + ("" if options.auto_remedy else
                                                       ". --auto-remedy tries them in order and ships the first that "
                                                       "passes the gate"))
    return "\n".join(lines)

