"""The Open Inference Protocol (KServe v2) on the wire, in numpy: inference requests and responses
over HTTP (JSON, and the binary tensor data extension), BYTES tensors, and the classification
extension. The gRPC front end (:mod:`effnet_runtime.serve.grpc_service`) reads its messages into
the same :class:`InferRequest` and writes the same :class:`OutputTensor`.

- A BYTES element in binary form is a 4-byte little-endian length and its bytes, elements in
  row-major order (the same in HTTP binary data and gRPC ``raw_*_contents``).
- Binary tensor data: the body is the JSON header (its length in the
  ``Inference-Header-Content-Length`` header) followed by the raw tensors, in the order of the
  inputs (or outputs) that carry ``parameters.binary_data_size``.
- The models served here take one input: ``image``, BYTES ``[N]`` (or ``[N, 1]``) of encoded
  pictures, or ``input``, FP32 ``[N, 3, H, W]`` already prepared; they give one output,
  ``probabilities``, FP32 ``[N, classes]``, or with ``"classification": K`` BYTES ``[N, K]`` of
  Triton's ``"score:index:label"`` strings.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import RequestError

IMAGE_INPUT = "image"
TENSOR_INPUT = "input"
OUTPUT = "probabilities"
HEADER_LENGTH = "inference-header-content-length"
_LENGTH = struct.Struct("<I")
_FP32 = np.dtype("<f4")


def refuse(message: str, status: int = 400) -> RequestError:
    """A protocol refusal (``{"error": message}`` on ``/v2``)."""
    return RequestError(status, "bad_request" if status == 400 else "refused", message)


@dataclass
class InputTensor:
    """An input: ``array`` for FP32, ``items`` (one bytes object per element) for BYTES."""

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None
    items: list[bytes] | None = None


@dataclass
class RequestedOutput:
    """An output asked for: binary or JSON data, top ``classification`` classes (0: probabilities)."""

    name: str
    binary: bool = False
    classification: int = 0


@dataclass
class InferRequest:
    """An inference request, whichever front end it came through. ``outputs`` None: every output."""

    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False


@dataclass
class OutputTensor:
    """An output: ``array`` (FP32) or ``items`` (BYTES)."""

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None
    items: list[bytes] | None = field(default=None, repr=False)

    def raw(self) -> bytes:
        """The binary form (little-endian numbers, or length-prefixed BYTES elements)."""
        if self.items is not None:
            return join_bytes(self.items)
        return np.ascontiguousarray(self.array, dtype=_FP32).tobytes()

    def json_data(self) -> list[Any]:
        """The flat JSON form (BYTES as UTF-8 strings)."""
        if self.items is not None:
            return [item.decode("utf-8", errors="replace") for item in self.items]
        return self.array.reshape(-1).tolist()


# --------------------------------------------------------------------------- tensors
def element_count(shape: Any, name: str) -> int:
    """The number of elements of ``shape`` (a list of whole numbers of 0 or more)."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise refuse(f"input {name!r}: shape must be a list of whole numbers of 0 or more, got {shape!r}")
    count = 1
    for dim in shape:
        count *= dim
    return count


def split_bytes(buffer: bytes | memoryview, count: int, name: str) -> list[bytes]:
    """The ``count`` elements of a binary BYTES tensor (each after its 4-byte length)."""
    view = memoryview(buffer)
    if count > len(view) // _LENGTH.size:
        raise refuse(f"input {name!r}: {len(view)} bytes cannot hold the {count} elements its shape says")
    items, offset = [], 0
    while offset < len(view):
        if offset + _LENGTH.size > len(view):
            raise refuse(f"input {name!r}: BYTES data ends inside a 4-byte length")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            raise refuse(f"input {name!r}: element {len(items)} claims {length} bytes, {len(view) - offset} remain")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    if len(items) != count:
        raise refuse(f"input {name!r}: {len(items)} BYTES elements, its shape says {count}")
    return items


def join_bytes(items: list[bytes]) -> bytes:
    """The binary form of BYTES elements (each after its 4-byte length)."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def fp32_tensor(data: Any, shape: list[int], count: int, name: str) -> np.ndarray:
    """An FP32 input from raw little-endian bytes or a (flat or nested) list of numbers."""
    if isinstance(data, (bytes, memoryview)):
        if len(data) != count * _FP32.itemsize:
            raise refuse(f"input {name!r}: {len(data)} bytes of FP32 data, shape {shape} needs "
                         f"{count * _FP32.itemsize}")
        return np.frombuffer(data, dtype=_FP32).reshape(shape)
    try:
        array = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise refuse(f"input {name!r}: data is not a list of numbers ({error})") from None
    if array.size != count:
        raise refuse(f"input {name!r}: {array.size} numbers, shape {shape} needs {count}")
    return array.reshape(shape)


def _elements(data: Any, base64_encoded: bool, name: str) -> list[bytes]:
    """BYTES elements given one by one: JSON strings (UTF-8, or base64 when the input says so), or
    gRPC ``bytes_contents``."""
    flat = np.asarray(data, dtype=object).reshape(-1).tolist() if isinstance(data, list) else [data]
    if all(isinstance(item, bytes) for item in flat):
        return flat
    if not all(isinstance(item, str) for item in flat):
        raise refuse(f"input {name!r}: BYTES data in JSON must be strings (send pictures as binary data, or as "
                     'base64 strings with "parameters": {"content_type": "base64"})')
    if not base64_encoded:
        return [item.encode("utf-8") for item in flat]
    try:
        return [base64.b64decode(item, validate=True) for item in flat]
    except ValueError:
        raise refuse(f"input {name!r}: content_type is base64 but an element is not base64") from None


def input_tensor(name: str, datatype: Any, shape: Any, data: Any, base64_encoded: bool = False) -> InputTensor:
    """An input from its parts: ``data`` is the binary form (bytes), JSON values, or a list of
    BYTES elements."""
    count = element_count(shape, name)
    if datatype == "BYTES":
        items = split_bytes(data, count, name) if isinstance(data, (bytes, memoryview)) \
            else _elements(data, base64_encoded, name)
        if len(items) != count:
            raise refuse(f"input {name!r}: {len(items)} BYTES elements, its shape says {count}")
        return InputTensor(name, datatype, shape, items=items)
    if datatype == "FP32":
        return InputTensor(name, datatype, shape, array=fp32_tensor(data, shape, count, name))
    raise refuse(f"input {name!r}: datatype {datatype!r} is not accepted; send {IMAGE_INPUT!r} as BYTES (encoded "
                 f"pictures) or {TENSOR_INPUT!r} as FP32 (prepared [N,3,H,W])")


# --------------------------------------------------------------------------- HTTP
def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise refuse(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def classification_count(value: Any, output: str) -> int:
    """The ``classification`` parameter of an output: 0 (probabilities) or K classes."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise refuse(f"output {output!r}: classification must be a whole number of 0 or more, got {value!r}")
    return value


def parse_http_request(body: bytes, header_length: str | None) -> InferRequest:
    """The inference request of an HTTP body: JSON, or a JSON header and binary tensor data."""
    split = len(body)
    if header_length is not None:
        text = header_length.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 12 and int(text) <= len(body)):
            raise refuse(f"Inference-Header-Content-Length {header_length[:40]!r} is not a byte count within the "
                         f"{len(body)}-byte body")
        split = int(text)
    try:
        header = json.loads(bytes(body[:split]))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise refuse(f"the request is not valid JSON ({error}); binary data needs the "
                     "Inference-Header-Content-Length header") from None
    header = _object(header, "the request")
    if not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise refuse('the request needs a non-empty "inputs" list')
    binary = memoryview(body)[split:]
    offset = 0
    inputs = []
    for spec in header["inputs"]:
        spec = _object(spec, "each input")
        name = spec.get("name")
        if not isinstance(name, str):
            raise refuse('every input needs a "name"')
        parameters = _object(spec.get("parameters"), f"input {name!r} parameters")
        if "binary_data_size" in parameters:
            size = parameters["binary_data_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise refuse(f"input {name!r}: binary_data_size {size!r} runs past the {len(binary)} bytes of "
                             "binary data")
            data: Any = binary[offset:offset + size]
            offset += size
        elif "data" in spec:
            data = spec["data"]
        else:
            raise refuse(f'input {name!r} has neither "data" nor parameters.binary_data_size')
        inputs.append(input_tensor(name, spec.get("datatype"), spec.get("shape"), data,
                                   parameters.get("content_type") == "base64"))
    if offset != len(binary):
        raise refuse(f"{len(binary) - offset} bytes of binary data follow the last input's")
    binary_output = bool(_object(header.get("parameters"), "parameters").get("binary_data_output", False))
    outputs = None
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list):
            raise refuse('"outputs" must be a list')
        outputs = []
        for spec in header["outputs"]:
            spec = _object(spec, "each output")
            parameters = _object(spec.get("parameters"), "output parameters")
            name = str(spec.get("name"))
            outputs.append(RequestedOutput(name, bool(parameters.get("binary_data", binary_output)),
                                           classification_count(parameters.get("classification"), name)))
    request_id = header.get("id")
    return InferRequest(None if request_id is None else str(request_id), inputs, outputs, binary_output)


def http_response(model: str, version: str, request_id: str | None,
                  outputs: list[tuple[OutputTensor, bool]]) -> tuple[bytes, dict[str, str]]:
    """The body and headers answering an inference: outputs flagged binary follow the JSON header."""
    header: dict[str, Any] = {"model_name": model, "model_version": version}
    if request_id is not None:
        header["id"] = request_id
    entries, chunks = [], []
    for tensor, binary in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary:
            raw = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor.json_data()
        entries.append(entry)
    header["outputs"] = entries
    text = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return text, {"content-type": "application/json"}
    return text + b"".join(chunks), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(text))}


# --------------------------------------------------------------------------- outputs
def classification(probabilities: np.ndarray, k: int, labels: list[str] | None) -> list[bytes]:
    """Triton's classification strings, the top ``k`` of each row, best first, row after row:
    ``"score:index:label"`` (the score with six decimals; no label when the model has none).
    Equal scores: the lower index first."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    items = []
    for row, indices in zip(probabilities, order, strict=True):
        for index in indices:
            text = f"{float(row[index]):f}:{int(index)}" + (f":{labels[index]}" if labels is not None else "")
            items.append(text.encode("utf-8"))
    return items


def check_outputs(request: InferRequest) -> None:
    """Refuse outputs the models do not have, before any work is spent on the request."""
    for output in request.outputs or []:
        if output.name != OUTPUT:
            raise refuse(f"unknown output {output.name!r}: this model gives {OUTPUT!r}")


def outputs_for(request: InferRequest, probabilities: np.ndarray,
                labels: list[str] | None) -> list[tuple[OutputTensor, bool]]:
    """The outputs the request asked for (default: the probabilities), each with its binary flag."""
    wanted = request.outputs if request.outputs else [RequestedOutput(OUTPUT, request.binary_output)]
    results = []
    for output in wanted:
        if output.classification:
            k = min(output.classification, probabilities.shape[1])
            tensor = OutputTensor(OUTPUT, "BYTES", [len(probabilities), k],
                                  items=classification(probabilities, k, labels))
        else:
            tensor = OutputTensor(OUTPUT, "FP32", list(probabilities.shape), array=probabilities)
        results.append((tensor, output.binary))
    return results


def model_metadata(name: str, versions: list[str], platform: str, resolution: int,
                   num_classes: int) -> dict[str, Any]:
    """A model's metadata: its two alternative inputs and its output."""
    return {"name": name, "versions": versions, "platform": platform,
            "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                       {"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, 3, resolution, resolution]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, num_classes]}]}
