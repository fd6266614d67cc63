"""Whether Triton kernels can run on a tensor, and their ``triton.jit`` wrappers.

A kernel runs on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``: how the tests check the kernels without a GPU). Triton decides between
compiling and interpreting when ``triton.jit`` wraps a function, so the kernels here are plain
functions, wrapped on first use in the mode the environment asks for at that moment: setting
the variable in a running process (a test) takes effect for the next launch.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from functools import cache
from typing import Any

import torch

_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """Whether Triton is installed here (it ships with CUDA builds of PyTorch on Linux)."""
    return _TRITON_INSTALLED


def interpreting() -> bool:
    """Whether Triton's interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")  # as Triton reads it


def kernels_run_on(tensor: torch.Tensor) -> bool:
    """Whether the Triton kernels can take ``tensor``: on CUDA, or on the CPU under the interpreter."""
    if not triton_available():
        return False
    if tensor.device.type == "cuda":
        return not interpreting()
    return tensor.device.type == "cpu" and interpreting()


@cache
def _jit(function: Callable[..., Any], interpret: bool) -> Any:
    import triton

    # triton.jit reads TRITON_INTERPRET when it wraps; `interpret` is part of the cache key only
    return triton.jit(function)


def jit(function: Callable[..., Any]) -> Any:
    """``triton.jit(function)``, compiled or interpreted as the environment says now."""
    return _jit(function, interpreting())
