"""What runs without PyTorch: image decoding, the eval preprocessing and the prediction record.

This module imports only the standard library, numpy and Pillow, so that every consumer
without PyTorch (a shipped folder's ``predict.py``, which gets a copy of this file beside it;
the torch-free server; edge targets) prepares images and reports predictions exactly as effnet
does. :mod:`effnet.data.images` reads files with the same functions, and
:func:`preprocess` is tested against :func:`effnet.data.transforms.eval_transforms`. It is part
of the ``effnet-runtime`` distribution, which effnet depends on.

Decoding (:func:`load_image`, :func:`decode_image`):

- EXIF orientation is applied (a phone photo comes out the way it is displayed).
- Transparency (RGBA, LA, palette with a transparent colour) is composited on white.
- 16-bit and 32-bit integer greyscale is scaled from 0-65535 to 0-255 (rounding to nearest);
  float greyscale (``F``) is read as 0-1. Values outside those ranges are clipped.
- Greyscale, bilevel, palette, CMYK and YCbCr go through Pillow's conversion to RGB.
- Images with more than ``max_pixels`` pixels are refused before decoding (decompression
  bombs), and so are images whose resized copy would have more (very thin images).

A prediction is one record of :data:`PREDICTION_SCHEMA` (version :data:`SCHEMA_VERSION`),
made by :func:`prediction_record`.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's default warning threshold: about 0.25 GiB of RGBA pixels."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
READ_ERROR_KINDS = ("empty", "not_an_image", "too_many_pixels", "corrupt", "missing", "unreadable")
"""The kinds of :class:`ImageReadError`, one per way a file can fail to give an image."""
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST}
WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SPECIAL_FILES = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class ImageReadError(ValueError):
    """A file that cannot be used as an image: unreadable, corrupt, truncated or too large.

    ``kind`` is one of :data:`READ_ERROR_KINDS`; ``reason`` says it in words.
    """

    def __init__(self, path: Path, reason: str, kind: str = "corrupt") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.kind = kind


def special_file(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it exists but is not a regular file, links followed ("a folder",
    "a FIFO (named pipe)", "a character device", ...), without opening it (a FIFO would block,
    ``/dev/zero`` never end); ``None`` for a regular file and for a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")


def has_image_extension(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def read_error(path: Path, error: BaseException) -> ImageReadError:
    """The :class:`ImageReadError` for an exception raised while opening or decoding ``path``."""
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageReadError(path, f"refused as a possible decompression bomb ({error})", "too_many_pixels")
    if isinstance(error, Image.UnidentifiedImageError):
        return ImageReadError(path, "not an image file (Pillow cannot identify it)", "not_an_image")
    if isinstance(error, FileNotFoundError):
        return ImageReadError(path, "file not found", "missing")
    if isinstance(error, OSError) and error.errno is not None:  # the file system refused, not the decoder
        return ImageReadError(path, f"cannot read the file: {_os_reason(error)}", "unreadable")
    text = str(error) or type(error).__name__
    return ImageReadError(path, f"corrupt or truncated image ({text})", "corrupt")


def _os_reason(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied (make it readable, or remove it)"
    if error.errno == errno.ELOOP:
        return "a symbolic link loop (the link points back to itself)"
    if isinstance(error, IsADirectoryError):
        return "it is a folder"
    return error.strerror or str(error)


def open_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None) -> Image.Image:
    """Open ``path`` (or the in-memory file ``data`` named ``path``) without decoding its pixels,
    refusing empty files and more than ``max_pixels`` pixels."""
    kind = special_file(path) if data is None else None
    if kind is not None:
        raise ImageReadError(path, f"not a regular file but {kind}; give an image file", "unreadable")
    if (len(data) if data is not None else path.stat().st_size) == 0:
        raise ImageReadError(path, "empty file (0 bytes)", "empty")
    image = Image.open(io.BytesIO(data) if data is not None else path)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageReadError(path, f"refused as a possible decompression bomb: {width}x{height} = "
                                   f"{width * height:,} pixels exceeds the limit of {max_pixels:,} (max_pixels)",
                             "too_many_pixels")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``image`` following the rules in the module docstring."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        values = np.asarray(image).astype(np.float64) * (255.0 if mode == "F" else 255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _decode(path: Path, max_pixels: int, data: bytes | None = None) -> Image.Image:
    try:
        with open_image(path, max_pixels, data) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except ImageReadError:
        raise
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, struct.error ...) on bad files
        raise read_error(path, error) from error


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` into an 8-bit RGB PIL image; raises :class:`ImageReadError` on any bad file."""
    return _decode(Path(path), max_pixels)


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """:func:`load_image` for a file held in memory (an upload); ``name`` labels its errors."""
    return _decode(Path(name), max_pixels, data)


def resize_size(preprocessing: Mapping[str, Any]) -> int:
    """The short side images are resized to before the center crop: ``resolution / crop_pct``."""
    return int(math.floor(preprocessing["resolution"] / preprocessing["crop_pct"]))


def resized_shape(width: int, height: int, preprocessing: Mapping[str, Any]) -> tuple[int, int]:
    """``(width, height)`` after resizing the short side to :func:`resize_size` (aspect kept)."""
    target = resize_size(preprocessing)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(target * long / short)
    return (target, new_long) if width <= height else (new_long, target)


def check_resized_pixels(path: Path, width: int, height: int, preprocessing: Mapping[str, Any],
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse an image whose resized copy would exceed ``max_pixels`` (a 1 x 100,000 pixel image
    becomes 256 x 25,600,000), before any work is spent on it."""
    new_width, new_height = resized_shape(width, height, preprocessing)
    if new_width * new_height > max_pixels:
        raise ImageReadError(path, f"{width}x{height} pixels would be resized to {new_width}x{new_height} "
                                   f"({new_width * new_height:,} pixels, more than the limit of {max_pixels:,}): "
                                   "the image is too thin to classify; crop it first", "too_many_pixels")


def preprocess(image: Image.Image, preprocessing: Mapping[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str = "<image>") -> np.ndarray:
    """One 8-bit RGB image as a float32 ``(3, H, W)`` array, as effnet's eval transform makes it:
    resize the short side to ``resolution / crop_pct`` with the preprocessing's interpolation,
    center-crop ``resolution``, scale to [0, 1], normalize by mean and std.

    ``preprocessing`` is a model's preprocessing as a mapping (``preprocessing.json``).
    """
    resolution = preprocessing["resolution"]
    width, height = image.size
    check_resized_pixels(Path(name), width, height, preprocessing, max_pixels)
    new_width, new_height = resized_shape(width, height, preprocessing)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), resample=RESAMPLE[preprocessing["interpolation"]])
    top = int(round((new_height - resolution) / 2.0))
    left = int(round((new_width - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) * np.float32(1.0 / 255.0)
    mean = np.asarray(preprocessing["mean"], dtype=np.float32)
    std = np.asarray(preprocessing["std"], dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, classes)`` logits, in float64 then back to float32."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------ predictions
SCHEMA_VERSION = 1
"""The version of :data:`PREDICTION_SCHEMA` that prediction records carry as ``schema_version``."""
_RANKED = {
    "type": "object",
    "required": ["rank", "class_index", "class_name", "probability"],
    "properties": {
        "rank": {"type": "integer", "minimum": 1},
        "class_index": {"type": "integer", "minimum": 0},
        "class_name": {"type": "string"},
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}
PREDICTION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "effnet prediction",
    "description": "One input's top classes, or why it could not be classified.",
    "type": "object",
    "required": ["schema_version", "path", "model", "top_k", "error"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "path": {"type": "string", "description": "the input: a file path, or an upload's file name"},
        "model": {"type": ["string", "null"], "description": "the model's name"},
        "top_k": {"type": "array", "items": _RANKED, "description": "the top classes, most probable first"},
        "error": {"type": ["string", "null"], "description": "why the input was not classified (top_k empty)"},
        "predictions": {"type": "array", "items": _RANKED, "deprecated": True,
                        "description": "the same list as top_k (effnet predict --format json before version 1)"},
        "file": {"type": "string", "deprecated": True,
                 "description": "the same as path (effnet serve's /v1/predict before version 1)"},
    },
    "additionalProperties": False,
}
"""The JSON form of one prediction, the same for ``effnet predict --format json``, the server's
``/v1/predict``, a shipped folder's ``predict.py --format json`` and bulk (Ray) output."""


def prediction_record(path: str, model: str | None, ranked: Sequence[tuple[int, str, float]] = (),
                      error: str | None = None, legacy: str | None = None) -> dict[str, Any]:
    """One prediction as a :data:`PREDICTION_SCHEMA` object.

    ``ranked``: ``(class_index, class_name, probability)`` of the top classes, best first.
    ``legacy``: also write a producer's field names from before the schema (``"predict"``: a
    ``predictions`` copy of ``top_k``; ``"serve"``: a ``file`` copy of ``path``), deprecated.
    """
    top_k = [{"rank": rank, "class_index": int(index), "class_name": str(name), "probability": float(probability)}
             for rank, (index, name, probability) in enumerate(ranked, start=1)]
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "path": path, "model": model, "top_k": top_k,
                              "error": error}
    if legacy == "predict":
        record["predictions"] = top_k
    elif legacy == "serve":
        record["file"] = path
    return record


def top_classes(probabilities: np.ndarray, labels: Sequence[str], top_k: int) -> list[tuple[int, str, float]]:
    """The ``top_k`` ``(class_index, class_name, probability)`` of one row of probabilities, best
    first (ties: the lower index first)."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:top_k]
    return [(int(i), labels[i], float(probabilities[i])) for i in order]


CSV_COLUMNS = ("path", "rank", "class_index", "class_name", "probability", "error")
"""The CSV form of predictions: one row per image and rank (one row with ``error`` for a failure)."""


def csv_rows(record: Mapping[str, Any]) -> list[list[Any]]:
    """The :data:`CSV_COLUMNS` rows of one :func:`prediction_record`."""
    if record["error"] is not None:
        return [[record["path"], "", "", "", "", record["error"]]]
    return [[record["path"], c["rank"], c["class_index"], c["class_name"], f"{c['probability']:.6f}", ""]
            for c in record["top_k"]]


# ------------------------------------------------------------------------------ shipped models
class ShippedFolderError(ValueError):
    """A ship folder that cannot be run: an unknown runtime or a broken manifest."""


class ShippedModel:
    """The network of a folder written by ``effnet ship``, in its own runtime: float32
    ``(N, 3, H, W)`` batches in, logits out. ``manifest``, ``labels`` and ``preprocessing``
    are the folder's JSON files. Runtimes: ``onnxruntime``, ``openvino``, ``torchscript``,
    ``litert`` (a ``.tflite`` file in ``ai-edge-litert``) and ``executorch`` (a ``.pte`` file;
    ``torchscript`` and ``executorch`` need PyTorch on a host)."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        folder = Path(folder)
        self.folder = folder
        self.manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
        self.labels: list[str] = json.loads((folder / "labels.json").read_text())
        self.preprocessing: dict[str, Any] = json.loads((folder / "preprocessing.json").read_text())
        self.name: str = self.manifest.get("model_name", folder.name)
        path = folder / self.manifest["model_file"]
        runtime = self.manifest["runtime"]
        if runtime == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self._run = lambda batch: session.run(None, {name: batch})[0]
        elif runtime == "openvino":
            import openvino

            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.manifest["inference_precision"]}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            request = openvino.Core().compile_model(str(path), "CPU", config).create_infer_request()
            self._run = lambda batch: request.infer({0: batch})[0].copy()
        elif runtime == "torchscript":
            import torch

            module = torch.jit.load(str(path), map_location="cpu").eval()

            def run(batch: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return module(torch.from_numpy(batch)).float().numpy()

            self._run = run
        elif runtime == "litert":
            self._run = litert_function(path, threads)
        elif runtime == "executorch":
            self._run = executorch_function(path, threads)
        else:
            raise ShippedFolderError(f"{folder / 'manifest.json'}: unknown runtime {runtime!r} (this copy knows "
                                     "onnxruntime, openvino, torchscript, litert and executorch)")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(np.ascontiguousarray(batch, dtype=np.float32)), dtype=np.float32)


def litert_function(path: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """float32 ``(N, C, H, W)`` -> logits with a ``.tflite`` file in LiteRT's interpreter (no torch).

    The file takes one image at a time (batch 1, NCHW). An INT8 file's int8 input is quantized
    and its output dequantized here with the tensors' own scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
    interpreter.allocate_tensors()
    source, result = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def one(image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source["index"], quantize(image[None], source))
        interpreter.invoke()
        return dequantize(interpreter.get_tensor(result["index"]), result)[0]

    return lambda batch: np.stack([one(image) for image in batch])


def quantize(values: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """``values`` in the dtype of a LiteRT tensor (``detail``): unchanged for float32, else
    ``clip(round(x / scale) + zero_point)``."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    limits = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, limits.min, limits.max).astype(dtype)


def dequantize(values: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """A LiteRT tensor's values (``detail``: its dtype, scale and zero point) as float32."""
    if np.dtype(detail["dtype"]) == np.float32:
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def executorch_function(path: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """float32 ``(N, C, H, W)`` -> logits with a ``.pte`` program in ExecuTorch's Python runtime
    (which imports torch on a host; on a device its C++ runtime runs the same file), one image
    at a time (the program has batch 1). ``threads`` sizes XNNPACK's process-wide thread pool."""
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    if threads:
        portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(Path(path)).load_method("forward")

    def one(image: np.ndarray) -> np.ndarray:
        # contiguous: a tensor with other strides is accepted and silently misread
        return method.execute([torch.from_numpy(np.ascontiguousarray(image[None]))])[0].numpy()[0]

    return lambda batch: np.stack([one(image) for image in batch])
