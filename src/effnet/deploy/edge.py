"""Edge files of an effnet network: ExecuTorch programs (``.pte``, XNNPACK delegate) and LiteRT
flatbuffers (``.tflite``), fp32 or INT8, with runners in their own host runtimes.

- ExecuTorch: ``torch.export`` at batch 1, then ``to_edge_transform_and_lower`` with the
  XNNPACK partitioner. Every op must land in the delegate: one left to ExecuTorch's portable
  kernels (slow, and maybe absent from a lean device build) refuses the file, naming the op and
  the module it comes from (:class:`NotDelegatedError`), before anything is written.
- LiteRT: Google's ``litert-torch`` converter (no TensorFlow). A file with a ``CUSTOM`` op (one
  the builtin kernels lack) is refused the same way.
- INT8: PT2E static quantization (per-channel symmetric weights, per-tensor activations,
  calibrated on real images) with the backend's own quantizer (ExecuTorch's XNNPACKQuantizer,
  litert-torch's PT2EQuantizer), plus :func:`fix_annotations`. An INT8 ``.tflite`` takes and
  gives int8 tensors (see :func:`effnet_runtime.portable.litert_function`); an INT8 ``.pte``
  keeps float32 input and output (the (de)quantization runs inside the delegate).

Before either conversion, TF-'SAME' convolutions (pretrained weights) become plain symmetric
convolutions (:func:`symmetric_padding`), exactly, so that no PAD op splits the integer graph.
The converters are the ``edge`` extra: ``pip install 'effnet[edge]'``.
"""

from __future__ import annotations

import collections
import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effnet_runtime import portable

from ..errors import ConfigError
from ..fuse import fold_batchnorm
from ..layers import Conv2dSame, same_padding_amounts
from .runtime import Runner

EDGE_RUNTIMES = {"executorch": ".pte", "litert": ".tflite"}
"""The edge runtimes and the suffix of their files."""
INSTALL = "pip install 'effnet[edge]' (executorch, litert-torch and ai-edge-litert)"
QUANTIZATION = {"executorch": "PT2E static, XNNPACKQuantizer (per-channel weights)",
                "litert": "PT2E static, litert-torch PT2EQuantizer (per-channel weights)"}
CALIBRATION_BATCH = 8
aten = torch.ops.aten
_CONVS = (aten.conv2d.default, aten.convolution.default)
_CLAMPS = (aten.hardtanh.default, aten.hardtanh_.default)
_ADDS = (aten.add.Tensor, aten.add_.Tensor)


class NotDelegatedError(ConfigError):
    """The network has ops the edge runtime's accelerated kernels cannot run; nothing was written."""


@dataclass(frozen=True)
class EdgeFile:
    """A written edge file and what its conversion found: ``ops`` counts the file's operators
    (``.tflite``) or the ops the XNNPACK delegate took (``.pte``); ``float_ops`` the ops of an
    INT8 ``.tflite`` that still compute in float (its float islands)."""

    path: Path
    runtime: str
    int8: bool
    seconds: float
    ops: dict[str, int] = field(default_factory=dict)
    float_ops: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        """What a ship folder's manifest records: the input tensor and the conversion."""
        return {"input": file_input(self.path, self.runtime),
                "conversion": {"seconds": round(self.seconds, 1), "ops": self.ops, "float_ops": self.float_ops}}


def file_input(path: str | Path, runtime: str) -> dict:
    """The input tensor of an edge file: layout, shape, dtype, and an int8 input's scale and zero
    point (``q = clip(round(x / scale) + zero_point, -128, 127)`` of the normalized image)."""
    if runtime == "executorch":
        from executorch.runtime import Runtime

        meta = Runtime.get().load_program(Path(path)).load_method("forward").metadata.input_tensor_meta(0)
        return {"layout": "NCHW", "shape": list(meta.sizes()), "dtype": "float32"}
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(path)).get_input_details()[0]
    described = {"layout": "NCHW", "shape": [int(v) for v in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name}
    if described["dtype"] != "float32":
        described["scale"], described["zero_point"] = (float(detail["quantization"][0]),
                                                       int(detail["quantization"][1]))
    return described


def require_edge(runtime: str) -> None:
    """Raise a ConfigError naming the install command unless ``runtime``'s converter imports."""
    module = {"executorch": "executorch.exir", "litert": "litert_torch"}[runtime]
    try:
        __import__(module)
    except ImportError as error:
        raise ConfigError(f"the {runtime} target needs {module.split('.')[0]}, which is not installed "
                          f"({error}); {INSTALL}") from error


def symmetric_padding(model: nn.Module, resolution: int) -> nn.Module:
    """A copy of ``model`` whose TF-'SAME' convs (:class:`~effnet.layers.Conv2dSame`) are plain
    ``nn.Conv2d`` with symmetric padding, exact at ``resolution``.

    Equal padding before and after stays as it is. One more after than before (stride 2 on an
    even size) becomes a kernel one tap larger with a zero first row and column and the larger
    padding on both sides: the extra tap only ever meets the added front padding, so the sums
    are the same, and no PAD op is left for a converter to keep in float.
    """
    model = copy.deepcopy(model).eval()
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str, module: nn.Module, args: tuple) -> None:
        sizes[name] = tuple(args[0].shape[-2:])

    hooks = [m.register_forward_pre_hook(partial(record, n)) for n, m in model.named_modules()
             if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    for hook in hooks:
        hook.remove()
    for name, conv in list(model.named_modules()):
        if isinstance(conv, Conv2dSame):
            model.set_submodule(name, _symmetric_conv(conv, sizes[name]))
    return model


def _symmetric_conv(conv: Conv2dSame, size: tuple[int, int]) -> nn.Conv2d:
    (top, bottom), (left, right) = (same_padding_amounts(size[a], conv.kernel_size[a], conv.stride[a],
                                                         conv.dilation[a]) for a in (0, 1))
    weight, kernel, padding = conv.weight.detach(), conv.kernel_size, (top, left)
    if (top, left) != (bottom, right):
        if (bottom - top, right - left) != (1, 1) or conv.dilation != (1, 1):
            raise ConfigError(f"TF 'SAME' padding {(top, bottom, left, right)} of a {conv.kernel_size} conv has no "
                              "symmetric form; export at another resolution")
        weight = nn.functional.pad(weight, (1, 0, 1, 0))
        kernel, padding = tuple(k + 1 for k in conv.kernel_size), (bottom, right)
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, kernel, conv.stride, padding, conv.dilation, conv.groups,
                      bias=conv.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(weight)
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    return plain


def edge_network(model: nn.Module) -> nn.Module:
    """The network as both converters take it: eval mode, BatchNorm folded, symmetric padding."""
    return symmetric_padding(fold_batchnorm(model), model.preprocessing.resolution)


def fix_annotations(graph: torch.fx.GraphModule, activation_spec, keep_float: tuple[str, ...] = ()) -> None:
    """Correct a PT2E quantizer's annotations (both quantizers need it).

    - A ReLU6 (``hardtanh``) after a conv *shares* the conv's observer, so its int8 grid spans
      the conv's whole pre-clamp range (hundreds in pretrained Lite0's stem): observe the clamp
      instead (the backends fuse the clamp into the conv, as they do for ReLU).
    - Adds the quantizer did not annotate (litert-torch finds adds through metadata a
      non-strict ``torch.export`` does not record) are annotated: chained residual adds would
      otherwise stay in float.
    - Nodes inside the modules named in ``keep_float`` (path components, e.g. ``stem``) lose
      their annotation: they compute in float.
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if keep_float and _in_modules(node, keep_float):
            node.meta.pop("quantization_annotation", None)
            continue
        if node.target in _CLAMPS:
            conv = node.args[0]
            annotation = conv.meta.get("quantization_annotation") if isinstance(conv, torch.fx.Node) else None
            if (conv.target in _CONVS and len(conv.users) == 1 and annotation is not None
                    and annotation.output_qspec is not None):
                annotation.output_qspec = None
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={}, output_qspec=activation_spec, _annotated=True)
        elif node.target in _ADDS and "quantization_annotation" not in node.meta:
            inputs = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={a: activation_spec for a in inputs}, output_qspec=activation_spec, _annotated=True)


def _in_modules(node: torch.fx.Node, names: tuple[str, ...]) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(part in names for path, _ in stack.values() for part in str(path).split("."))


def _quantizer(runtime: str, keep_float: tuple[str, ...]):
    if runtime == "executorch":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer as Base,
        )
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            get_symmetric_quantization_config,
        )
    else:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer as Base
        from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    config = get_symmetric_quantization_config(is_per_channel=True)

    class Fixed(Base):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            fix_annotations(model, config.output_activation, keep_float)
            return model

    return Fixed().set_global(config)


def quantized_graph(network: nn.Module, runtime: str, calibration: torch.Tensor,
                    keep_float: tuple[str, ...] = ()):
    """``network`` (from :func:`edge_network`) quantized for ``runtime``: a batch-1 graph with
    quantize/dequantize pairs, calibrated on ``calibration`` (N, C, H, W), and its quantizer."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from .quantize import capture_for_quantization

    quantizer = _quantizer(runtime, keep_float)
    example = calibration[:1].contiguous()
    captured = capture_for_quantization(network, example.repeat(2, 1, 1, 1))
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for batch in _batches(calibration):
            prepared(batch)
    return convert_pt2e(prepared, fold_quantize=runtime == "executorch"), quantizer


def _batches(images: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), CALIBRATION_BATCH):
        yield images[start:start + CALIBRATION_BATCH]


def write_edge(model: nn.Module, path: str | Path, runtime: str, calibration: torch.Tensor | None = None,
               keep_float: tuple[str, ...] = ()) -> EdgeFile:
    """Convert ``model`` for ``runtime`` (``executorch`` or ``litert``) into ``path``: fp32, or
    INT8 calibrated on ``calibration`` when given. Raises :class:`NotDelegatedError` (nothing
    written) when an op would run outside the runtime's accelerated kernels."""
    if runtime not in EDGE_RUNTIMES:
        raise ConfigError(f"unknown edge runtime {runtime!r}; choose one of {', '.join(EDGE_RUNTIMES)}")
    if "activations" in keep_float:
        raise ConfigError("the edge targets fuse activations into their convs and cannot keep them in float; "
                          "keep stem, head, classifier or se instead")
    require_edge(runtime)
    start = time.perf_counter()
    network = edge_network(model)
    size = model.preprocessing.resolution
    example = torch.zeros(1, 3, size, size)
    quantizer = None
    if calibration is not None:
        network, quantizer = quantized_graph(network, runtime, calibration, keep_float)
    path = Path(path)
    if runtime == "executorch":
        ops = _write_pte(network, example, path)
        return EdgeFile(path, runtime, quantizer is not None, time.perf_counter() - start, ops)
    ops, float_ops = _write_tflite(network, example, path, quantizer)
    return EdgeFile(path, runtime, quantizer is not None, time.perf_counter() - start, ops, float_ops)


def _write_pte(network: nn.Module, example: torch.Tensor, path: Path) -> dict[str, int]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir.lowered_backend_module import get_lowered_submodules

    program = torch.export.export(network, (example,))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    graph = lowered.exported_program().graph_module
    left = [(_op_name(node), _module_of(node)) for node in graph.graph.nodes if node.op == "call_function"
            and "executorch_call_delegate" not in _op_name(node) and _op_name(node) != "getitem"]
    if left:
        ops = ", ".join(sorted({op for op, _ in left}))
        raise NotDelegatedError(f"ExecuTorch's XNNPACK delegate cannot run {len(left)} op(s) of this network "
                                f"({ops}; the first in module {left[0][1] or '?'}): they would run on slow portable "
                                "kernels; nothing was written. Use an activation XNNPACK has (relu6, silu, gelu, "
                                "hardswish) or another target")
    delegated: collections.Counter[str] = collections.Counter()
    for _, submodule, _ in get_lowered_submodules(graph):
        delegated.update(_op_name(n) for n in submodule.original_module.graph.nodes if n.op == "call_function")
    path.write_bytes(lowered.to_executorch().buffer)
    return dict(delegated.most_common())


def _op_name(node: torch.fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _module_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def _write_tflite(network: nn.Module, example: torch.Tensor, path: Path, quantizer) -> tuple[dict, dict]:
    import litert_torch

    config = None
    if quantizer is not None:
        from litert_torch.quantize.quant_config import QuantConfig

        config = QuantConfig(pt2e_quantizer=quantizer)
    converted = litert_torch.convert(network, (example,), quant_config=config)
    temporary = path.with_name(path.name + ".partial")
    converted.export(str(temporary))
    ops, float_ops = tflite_ops(temporary)
    custom = sorted(op for op in ops if op.startswith("CUSTOM"))
    if custom:
        temporary.unlink()
        raise NotDelegatedError(f"the .tflite file needs {', '.join(custom)}, which LiteRT's builtin kernels lack; "
                                "nothing was written. Use another activation or target")
    temporary.replace(path)
    return ops, float_ops if quantizer is not None else {}


def tflite_ops(path: str | Path) -> tuple[dict[str, int], dict[str, int]]:
    """Operator counts of a ``.tflite`` file, and those of its ops other than QUANTIZE and
    DEQUANTIZE whose output is float32 (the float islands of an INT8 file), read from the
    flatbuffer with the schema ``ai-edge-litert`` ships."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(Path(path).read_bytes(), 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    ops: collections.Counter[str] = collections.Counter()
    float_ops: collections.Counter[str] = collections.Counter()
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode))
        if name == "CUSTOM":
            name = f"CUSTOM:{code.customCode.decode() if code.customCode else '?'}"
        ops[name] += 1
        if name not in ("QUANTIZE", "DEQUANTIZE") and graph.tensors[op.outputs[0]].type == schema.TensorType.FLOAT32:
            float_ops[name] += 1
    return dict(ops.most_common()), dict(float_ops.most_common())


def edge_runner(path: str | Path, runtime: str, threads: int | None = None, name: str | None = None) -> Runner:
    """A runner over an edge file in its own runtime (batches run one image at a time)."""
    function = portable.litert_function if runtime == "litert" else portable.executorch_function
    return Runner(name or runtime, function(path, threads))


def max_relative_difference(reference: np.ndarray, other: np.ndarray) -> float:
    """The largest absolute difference of two logit arrays over the largest absolute reference logit."""
    reference = np.asarray(reference, np.float64)
    return float(np.abs(reference - other).max() / max(np.abs(reference).max(), 1e-12))
