"""INT8 post-training quantization and quantization-aware training.

Two paths, both static (activations calibrated ahead of time) with per-channel weights:

- ONNX Runtime QDQ (:func:`quantize_onnx`), the CPU deployment path: the fp32 ONNX export
  gets QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels.
- PyTorch PT2E through torchao (:func:`quantize_pt2e`, :func:`quantize_aware_train`) with the
  X86 Inductor quantizer, run by lowering to oneDNN int8 kernels (:func:`lower_for_cpu`).

EfficientNet is known to suffer under naive INT8: SiLU and the squeeze-excitation gate
produce long-tailed activations, and depthwise convs have few weights per channel. The
remedies are options here: per-channel weights, calibration methods that clip outliers,
keeping sensitive layers in float (:data:`LAYER_GROUPS`), quantization-aware training, and
the Lite variants (ReLU6, no SE), which were designed to quantize.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..files import atomic_write
from ..fuse import fold_batchnorm
from ..layers import Conv2dSame, same_padding_amounts
from .environment import int8_kernels_saturate
from .export import DEFAULT_OPSET, METADATA_KEY, NAME_SCOPES_KEY, export_model, export_program, write_onnx
from .runtime import Runner, onnx_runner

LAYER_GROUPS = ("stem", "head", "classifier", "se", "activations")
"""Parts of an EfficientNet that can be kept in float: the first conv, the last conv, the
linear classifier, the squeeze-excitation modules, and the activations (SiLU/ReLU6 ops)."""

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")


def check_groups(groups: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    unknown = sorted(set(groups) - set(LAYER_GROUPS))
    if unknown:
        raise ConfigError(f"unknown layer group(s) {', '.join(unknown)} to keep in float; "
                          f"choose from {', '.join(LAYER_GROUPS)}")
    return tuple(groups)


@dataclass(frozen=True)
class OrtRecipe:
    """Settings of ONNX Runtime static QDQ quantization.

    ``per_channel``: one weight scale per output channel (depthwise convs need it).
    ``reduce_range``: 7-bit weights, avoiding the int16 saturation of u8s8 kernels on x86 CPUs
    without VNNI; ``None`` (the default) chooses it for this CPU
    (:func:`~effnet.deploy.environment.int8_kernels_saturate`). ``calibrate_method``: ``minmax``
    (full observed range), ``entropy`` or ``percentile`` (clip outliers). ``activation_type``:
    ``uint8`` (asymmetric, the x86 default) or ``int8`` (symmetric). ``keep_float``:
    :data:`LAYER_GROUPS` left unquantized.
    """

    per_channel: bool = True
    reduce_range: bool | None = None
    calibrate_method: str = "minmax"
    activation_type: str = "uint8"
    keep_float: tuple[str, ...] = ()
    percentile: float = 99.999

    def __post_init__(self) -> None:
        if self.calibrate_method not in CALIBRATION_METHODS:
            raise ConfigError(f"unknown calibration method {self.calibrate_method!r}; "
                              f"choose one of {', '.join(CALIBRATION_METHODS)}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise ConfigError(f"unknown activation type {self.activation_type!r}; "
                              f"choose one of {', '.join(ACTIVATION_TYPES)}")
        object.__setattr__(self, "keep_float", check_groups(self.keep_float))
        if self.reduce_range is None:
            object.__setattr__(self, "reduce_range", int8_kernels_saturate())

    def describe(self) -> str:
        parts = ["per-channel" if self.per_channel else "per-tensor", self.calibrate_method]
        if self.reduce_range:
            parts.append("reduce-range")
        if self.activation_type != "uint8":
            parts.append(f"{self.activation_type} act")
        if self.keep_float:
            parts.append("float " + "+".join(self.keep_float))
        return ", ".join(parts)


class _ArrayReader:
    """ONNX Runtime's CalibrationDataReader over an (N, C, H, W) array, in batches."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int) -> None:
        self._batches: Iterator[np.ndarray] = iter(np.array_split(images, max(1, -(-len(images) // batch_size))))
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)}


def onnx_nodes_in_groups(model_path: str | Path, groups: tuple[str, ...]) -> list[str]:
    """Names of the ONNX nodes that belong to the given :data:`LAYER_GROUPS`.

    Relies on the module scopes the torch.export-based exporter records on every node
    (``pkg.torch.onnx.name_scopes``), which :func:`effnet.deploy.export.export_model` keeps.
    """
    import onnx

    check_groups(groups)
    if not groups:
        return []
    selected = []
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        scopes = next((ast.literal_eval(p.value) for p in node.metadata_props if p.key == NAME_SCOPES_KEY), None)
        if scopes is None:
            raise ConfigError(f"{model_path}: node {node.name} carries no module scope; keeping layer groups "
                              "in float needs an ONNX file from the torch.export-based exporter (opset >= 18)")
        if any(_in_group(scopes, node.op_type, group) for group in groups):
            selected.append(node.name)
    return selected


def _in_group(scopes: list[str], op_type: str, group: str) -> bool:
    if group in ("stem", "head", "classifier"):
        return group in scopes
    if group == "se":
        return any(s.endswith(".se") for s in scopes)
    return op_type in ("Sigmoid", "Mul", "Clip", "Relu") and any(s.endswith(".act") for s in scopes)


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, calibration: torch.Tensor | np.ndarray,
                  recipe: OrtRecipe = OrtRecipe(), batch_size: int = 16) -> Path:
    """Quantize an fp32 ONNX file to INT8 QDQ with ``calibration`` images (preprocessed, NCHW).

    The result is written under a temporary name and only renamed to ``out_path`` once ONNX
    Runtime has loaded it and run a batch.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    images = calibration.numpy() if isinstance(calibration, torch.Tensor) else np.asarray(calibration)
    if len(images) == 0:
        raise ConfigError("no calibration images to quantize with")
    out_path = Path(out_path)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    activation = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[recipe.activation_type]
    extra = {"ActivationSymmetric": recipe.activation_type == "int8", "WeightSymmetric": True}
    if recipe.calibrate_method == "percentile":
        extra["CalibPercentile"] = recipe.percentile
    with tempfile.TemporaryDirectory(prefix="effnet-quant-") as work:
        prepared = Path(work, "prepared.onnx")
        quant_pre_process(str(fp32_path), str(prepared))

        def quantize_and_check(temp: Path) -> None:
            quantize_static(str(prepared), str(temp), _ArrayReader("input", images, batch_size),
                            quant_format=QuantFormat.QDQ, per_channel=recipe.per_channel,
                            reduce_range=recipe.reduce_range, activation_type=activation,
                            weight_type=QuantType.QInt8, calibrate_method=methods[recipe.calibrate_method],
                            nodes_to_exclude=onnx_nodes_in_groups(prepared, recipe.keep_float),
                            extra_options=extra)
            onnx_runner(temp, threads=1)(images[:1])

        atomic_write(out_path, quantize_and_check)
    return out_path


def export_and_quantize_onnx(model: nn.Module, out_path: str | Path, calibration: torch.Tensor,
                             recipe: OrtRecipe = OrtRecipe(), fp32_path: str | Path | None = None) -> Path:
    """Export ``model`` to fp32 ONNX (verified, BN folded) and quantize it to ``out_path``.

    The fp32 file is kept at ``fp32_path`` when given (else only a temporary copy is used).
    """
    with tempfile.TemporaryDirectory(prefix="effnet-export-") as work:
        fp32 = Path(fp32_path) if fp32_path is not None else Path(work, "fp32.onnx")
        export_model(model, fp32, "onnx", fold_bn=True)
        return quantize_onnx(fp32, out_path, calibration, recipe)


@dataclass(frozen=True)
class Pt2eRecipe:
    """Settings of torchao PT2E quantization with the X86 Inductor quantizer.

    Weights are always per-channel symmetric int8, activations per-tensor uint8 calibrated by
    histogram. ``reduce_range``: 7-bit activations, for x86 CPUs without VNNI, whose oneDNN
    kernels would saturate on full-range ones; ``None`` (the default) chooses it for this CPU.
    ``keep_float``:
    :data:`LAYER_GROUPS` left unquantized (not ``activations``, which are fused into convs).
    """

    reduce_range: bool | None = None
    keep_float: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_float", check_groups(self.keep_float))
        if self.reduce_range is None:
            object.__setattr__(self, "reduce_range", int8_kernels_saturate())
        if "activations" in self.keep_float:
            raise ConfigError("the PT2E path fuses activations into their convs and cannot keep them alone in "
                              "float; keep 'se', 'stem', 'head' or 'classifier' in float instead, or use ONNX Runtime")


def module_names_in_groups(model: nn.Module, groups: tuple[str, ...]) -> list[str]:
    """Names of the submodules of an EfficientNet that make up the given layer groups (not ``activations``)."""
    return [name for name, _ in model.named_modules()
            if name in groups or ("se" in groups and name.endswith(".se"))]


def _import_torchao() -> None:
    """Import torchao's PT2E package once, without the deprecation notice its import logs through torch."""
    pytree_logger = logging.getLogger("torch.utils._pytree")
    level = pytree_logger.level
    pytree_logger.setLevel(logging.ERROR)
    try:
        import torchao.quantization.pt2e  # noqa: F401
    finally:
        pytree_logger.setLevel(level)


def _x86_quantizer(model: nn.Module, recipe: Pt2eRecipe, is_qat: bool):
    _import_torchao()
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config(is_qat=is_qat,
                                                                      reduce_range=recipe.reduce_range))
    for name in module_names_in_groups(model, recipe.keep_float):
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


def capture_for_quantization(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """``torch.export`` graph (dynamic batch) of a copy of ``model`` that PT2E quantizers understand.

    The X86 quantizer finds convs and activations by module type: convs must be plain
    ``nn.Conv2d`` (TF-'SAME' convs become a fixed ``ZeroPad2d`` for the example's size,
    followed by one) and activations out-of-place (``silu_`` or ``hardtanh_`` are not
    recognised). Anything it does not recognise would silently stay in float.
    """
    model = copy.deepcopy(model)
    input_sizes: dict[str, tuple[int, int]] = {}
    hooks = [module.register_forward_pre_hook(partial(_record_size, input_sizes, name))
             for name, module in model.named_modules() if isinstance(module, Conv2dSame)]
    training = model.training
    with torch.no_grad():
        model.eval()(example)
    model.train(training)
    for hook in hooks:
        hook.remove()
    for name, module in list(model.named_modules()):
        if getattr(module, "inplace", False):
            module.inplace = False
        if isinstance(module, nn.Conv2d) and type(module) is not nn.Conv2d:
            model.set_submodule(name, _plain_conv(module, input_sizes.get(name)))
    return export_program(model, example).module()


def _record_size(sizes: dict[str, tuple[int, int]], name: str, module: nn.Module, args: tuple) -> None:
    sizes[name] = tuple(args[0].shape[-2:])


def _plain_conv(conv: nn.Conv2d, input_size: tuple[int, int] | None) -> nn.Module:
    """An ``nn.Conv2d`` with ``conv``'s parameters; with ``input_size``, TF 'SAME' padding made explicit."""
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      0 if input_size is not None else conv.padding, conv.dilation, conv.groups,
                      bias=conv.bias is not None)
    plain.load_state_dict(conv.state_dict())
    if input_size is None:
        return plain
    top, bottom = same_padding_amounts(input_size[0], conv.kernel_size[0], conv.stride[0], conv.dilation[0])
    left, right = same_padding_amounts(input_size[1], conv.kernel_size[1], conv.stride[1], conv.dilation[1])
    return nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), plain)


def _batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def quantize_pt2e(model: nn.Module, calibration: torch.Tensor, recipe: Pt2eRecipe = Pt2eRecipe(),
                  batch_size: int = 16) -> torch.fx.GraphModule:
    """Post-training static INT8 through torchao PT2E with the X86 Inductor quantizer.

    The model is captured with ``torch.export`` (dynamic batch), observed on ``calibration``
    and converted to a graph of quantize/dequantize and float ops; run it fast with
    :func:`lower_for_cpu` or ``torch.compile``, or save it with :func:`save_pt2e`.
    """
    _import_torchao()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if len(calibration) == 0:
        raise ConfigError("no calibration images to quantize with")
    model = model.eval()
    quantizer = _x86_quantizer(model, recipe, is_qat=False)
    captured = capture_for_quantization(model, calibration[:1].repeat(2, 1, 1, 1))
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for batch in _batches(calibration, batch_size):
            prepared(batch)
    return convert_pt2e(prepared)


@dataclass(frozen=True)
class QatSettings:
    """Quantization-aware training: distillation from the fp32 model for a few epochs.

    The student (the fake-quantized network, BatchNorm folded into its convs) learns to
    reproduce the fp32 model's class probabilities (KL divergence), so unlabelled images
    suffice. Activation ranges keep being observed for the first ``1 - freeze_fraction`` of
    the steps, then stay fixed while the weights settle.
    """

    epochs: int = 2
    lr: float = 1e-4
    momentum: float = 0.9
    freeze_fraction: float = 0.3

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0 or not 0 <= self.freeze_fraction < 1:
            raise ConfigError(f"invalid QAT settings: epochs={self.epochs}, lr={self.lr}, "
                              f"freeze_fraction={self.freeze_fraction}")


def quantize_aware_train(model: nn.Module, batches: Iterable[torch.Tensor], settings: QatSettings = QatSettings(),
                         recipe: Pt2eRecipe = Pt2eRecipe(),
                         progress: Callable[[int, int, float], None] | None = None) -> torch.fx.GraphModule:
    """INT8 by quantization-aware training through torchao PT2E (``prepare_qat_pt2e``).

    ``batches`` yields preprocessed image batches (N, C, H, W) and is iterated once per epoch;
    ``progress(epoch, step, loss)`` is called after every step. BatchNorm is folded first and
    dropout is off: with a few epochs on little data, batch statistics would only add noise
    to what the student must match. Returns the converted network, like :func:`quantize_pt2e`.
    """
    import torch.nn.functional as F

    _import_torchao()
    from torchao.quantization.pt2e import disable_observer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    teacher = model.eval()
    batches_per_epoch = len(batches) if isinstance(batches, Sized) else None
    first = next(iter(batches), None)
    if first is None or len(first) == 0:
        raise ConfigError("no images to train on for quantization-aware training")
    quantizer = _x86_quantizer(model, recipe, is_qat=True)
    captured = capture_for_quantization(fold_batchnorm(model), first[:1].repeat(2, 1, 1, 1))
    prepared = prepare_qat_pt2e(captured, quantizer)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=settings.lr, momentum=settings.momentum)
    total = settings.epochs * batches_per_epoch if batches_per_epoch else None
    freeze_at = max(1, int(total * (1 - settings.freeze_fraction))) if total else None
    step = 0
    for epoch in range(settings.epochs):
        for images in batches:
            if step == freeze_at:
                prepared.apply(disable_observer)
            with torch.no_grad():
                target = F.log_softmax(teacher(images), dim=1)
            loss = F.kl_div(F.log_softmax(prepared(images), dim=1), target, log_target=True, reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if progress is not None:
                progress(epoch, step, loss.item())
    return convert_pt2e(prepared)


def lower_for_cpu(converted: torch.fx.GraphModule, name: str = "pt2e int8 (oneDNN)") -> Runner:
    """A runner of a PT2E-converted network on oneDNN int8 kernels.

    torchao's ``lower_pt2e_quantized_to_x86`` fixes the batch size, so a lowered graph is
    made for each batch size met (once, on first use): a batch-1 latency is that of a
    batch-1 graph, never of a padded larger batch.
    """
    _import_torchao()
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

    lowered: dict[int, torch.fx.GraphModule] = {}

    def predict(batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        if count not in lowered:
            with torch.no_grad():
                lowered[count] = lower_pt2e_quantized_to_x86(converted, (torch.zeros(count, *batch.shape[1:]),))
        with torch.inference_mode():
            return lowered[count](torch.from_numpy(batch)).float().numpy()

    return Runner(name, predict)


def save_pt2e(converted: torch.fx.GraphModule, path: str | Path, input_shape: tuple[int, ...],
              metadata: dict | None = None) -> Path:
    """Save a PT2E-converted network, dynamic batch, int8 weights: as a ``.pt2`` program, or,
    for a path ending in ``.onnx``, as an ONNX QDQ model for ONNX Runtime.

    A ``.pt2`` loads with ``torch.export.load(path).module()`` (pass that to
    :func:`lower_for_cpu` to run it on int8 kernels). Written under a temporary name, checked
    to load in its runtime, then renamed.
    """
    path = Path(path)
    example = torch.zeros(2, *input_shape)

    def write_and_load(temp: Path) -> None:
        if path.suffix == ".onnx":
            write_onnx(converted, example, temp, metadata or {}, DEFAULT_OPSET)
            onnx_runner(temp, threads=1)(example[:1].numpy())
        else:
            torch.export.save(export_program(converted, example), str(temp),
                              extra_files={f"{METADATA_KEY}.json": json.dumps(metadata or {})})
            torch.export.load(str(temp))

    return atomic_write(path, write_and_load)
