"""``effnet serve``: PyTorch models in the server of :mod:`effnet_runtime.serve`.

The server itself (HTTP and gRPC front ends, the Open Inference Protocol, the model repository,
batching, limits, metrics, the page) lives in the torch-free ``effnet-runtime`` distribution,
which also runs shipped folders without PyTorch (``effnet-serve``). effnet adds the predictors
that need PyTorch (:mod:`effnet.serve.predictor`): a registry model or checkpoint run by an
:class:`effnet.infer.Classifier`, prepared exactly as ``effnet predict`` prepares images, or
exported at start-up to another runtime; and checkpoints (``model.safetensors``) as versions of a
repository. Everything here but :data:`RUNTIMES` is imported on first use (it needs PyTorch).
"""

from __future__ import annotations

import importlib
from typing import Any

RUNTIMES = ("torch", "onnxruntime", "openvino", "torchscript")
"""What ``effnet serve --runtime`` runs a --model/--checkpoint in (the others exported at start-up)."""
_NEEDS_TORCH = ("ExportedPredictor", "TorchPredictor", "load_predictor", "load_version")


def __getattr__(name: str) -> Any:
    if name in _NEEDS_TORCH:
        return getattr(importlib.import_module(".predictor", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RUNTIMES", *_NEEDS_TORCH]
