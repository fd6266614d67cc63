"""Run a deployed artifact in its own runtime behind one interface: float32 NCHW in, logits out.

A :class:`Runner` hides whether the network runs in eager PyTorch, TorchScript, a
``torch.export`` program or ONNX Runtime, so verification, accuracy and latency code is
written once for every format.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..files import input_file

FORMATS = ("onnx", "torchscript", "pt2")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}


def check_format(format: str) -> str:
    """``format`` if it is one we export, else a ValueError naming the choices."""
    if format not in FORMATS:
        raise ConfigError(f"unsupported format {format!r}; choose one of {', '.join(FORMATS)}")
    return format


@dataclass
class Runner:
    """A callable network: ``runner(batch)`` maps a float32 (N, C, H, W) array to (N, classes) logits."""

    name: str
    predict: Callable[[np.ndarray], np.ndarray]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.predict(np.ascontiguousarray(batch, dtype=np.float32))


def torch_runner(module: Callable[[torch.Tensor], torch.Tensor], name: str = "pytorch") -> Runner:
    """A runner over any PyTorch callable (eager, scripted, exported or compiled), already in eval mode."""

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).float().numpy()

    return Runner(name, predict)


def onnxruntime_session(path: str | Path, threads: int | None = None, optimization: str = "all",
                        parallel: bool = False):
    """An ONNX Runtime CPU session: graph optimizations on, ``threads`` intra-op threads (None: all cores)."""
    import onnxruntime as ort

    levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels:
        raise ConfigError(f"unknown ONNX Runtime optimization level {optimization!r}; choose one of {list(levels)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_runner(path: str | Path, threads: int | None = None, optimization: str = "all",
                name: str = "onnxruntime") -> Runner:
    """A runner over an ONNX file in ONNX Runtime (CPU)."""
    session = onnxruntime_session(path, threads, optimization)
    input_name = session.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: batch})[0]

    return Runner(name, predict)


def load_runner(path: str | Path, format: str, threads: int | None = None) -> Runner:
    """Load an exported file in the runtime its format belongs to.

    ``onnx``: ONNX Runtime; ``torchscript``: ``torch.jit.load``; ``pt2``: ``torch.export.load``.
    """
    check_format(format)
    path = input_file(path, f"{format} file")
    if format == "onnx":
        return onnx_runner(path, threads)
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated upstream in favour of torch.export
            return torch_runner(torch.jit.load(str(path), map_location="cpu"), "torchscript")
    return torch_runner(torch.export.load(str(path)).module(), "torch.export")
