"""Serving a classifier over HTTP (``effnet serve``): FastAPI on uvicorn, dynamic batching,
Prometheus metrics and a web page.

The settings, predictors and the batcher import without the serving stack; ``create_app`` and
``serve`` need the ``serve`` extra (``pip install 'effnet[serve]'``) and are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .batching import Batcher, QueueFullError
from .options import ModelSource, ServeOptions
from .predictor import RUNTIMES, Predictor, RunnerPredictor, TorchPredictor, load_artifact, load_predictor

_NEEDS_SERVING_STACK = {"create_app": ".app", "serve": ".server"}


def __getattr__(name: str) -> Any:
    if name in _NEEDS_SERVING_STACK:
        return getattr(importlib.import_module(_NEEDS_SERVING_STACK[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RUNTIMES",
    "Batcher",
    "ModelSource",
    "Predictor",
    "QueueFullError",
    "RunnerPredictor",
    "ServeOptions",
    "TorchPredictor",
    "create_app",
    "load_artifact",
    "load_predictor",
    "serve",
]
