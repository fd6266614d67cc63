"""OpenVINO as a CPU runtime: convert an exported ONNX file to OpenVINO IR and run it.

The precision OpenVINO computes in is always set explicitly (``INFERENCE_PRECISION_HINT``):
on CPUs with AVX-512 BF16 or AMX its default is bf16, which would make an "fp32" figure a
bf16 one. ``f32`` and ``bf16`` are therefore separate runners, and :func:`bf16_supported`
says whether this CPU has bf16 at all. INT8 comes from a quantized (QDQ) ONNX file: OpenVINO
reads the QuantizeLinear/DequantizeLinear pairs as FakeQuantize and runs the convolutions on
its int8 kernels (NNCF, OpenVINO's own quantizer, is not used).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..files import publish
from .runtime import Runner

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
"""effnet's precision names -> OpenVINO's ``INFERENCE_PRECISION_HINT`` values."""


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ConfigError("OpenVINO is not installed; pip install 'effnet[openvino]' (or openvino)") from None
    return openvino


def openvino_version() -> str:
    return _openvino().__version__.split("-")[0]


def bf16_supported() -> bool:
    """Whether OpenVINO can compute in bf16 on this CPU (AVX-512 BF16 or AMX)."""
    return "BF16" in _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def convert_onnx(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Convert an ONNX file to OpenVINO IR (``.xml`` + ``.bin`` beside it), weights kept in fp32.

    Both files are written under temporary names in the destination folder and renamed only
    once the conversion has succeeded (the ``.bin`` first, so an ``.xml`` never lacks it).
    """
    ov = _openvino()
    xml_path = Path(xml_path)
    if xml_path.suffix != ".xml":
        raise ConfigError(f"an OpenVINO model file ends in .xml; got {xml_path}")
    model = ov.convert_model(str(onnx_path))
    with tempfile.TemporaryDirectory(dir=xml_path.parent, prefix=".effnet-openvino-") as work:
        temp_xml = Path(work, xml_path.name)
        ov.save_model(model, str(temp_xml), compress_to_fp16=False)
        publish(temp_xml.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        publish(temp_xml, xml_path)
    return xml_path


def openvino_runner(xml_path: str | Path, precision: str = "fp32", threads: int | None = None,
                    name: str | None = None) -> Runner:
    """A runner over an OpenVINO IR (or ONNX) file on the CPU, computing in ``precision``.

    ``precision``: ``fp32`` or ``bf16`` (the float parts of an INT8 model run in it too).
    ``bf16`` on a CPU without bf16 is refused rather than silently run in fp32.
    """
    ov = _openvino()
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown OpenVINO precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not bf16_supported():
        raise ConfigError("this CPU has no bf16 support (AVX-512 BF16 or AMX), so OpenVINO cannot run in bf16; "
                          "choose fp32")
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision]}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(str(xml_path), "CPU", config).create_infer_request()

    def predict(batch: np.ndarray) -> np.ndarray:
        return request.infer({0: batch})[0].copy()

    return Runner(name or f"openvino {precision}", predict)
