"""Reading the models effnet trains: a run directory, its ``.pt`` checkpoints, its ``.safetensors``.

A training checkpoint is a plain dict saved with ``torch.save`` that ``torch.load(weights_only=True)``
reads (tensors, numbers, strings, lists and dicts only). Beside the training state it holds the
model's metadata under ``model_meta``, the same :func:`effnet.weights.io.model_metadata` a
``.safetensors`` file carries, so both are rebuilt by one :func:`~effnet.weights.io.model_from_metadata`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, InputFileError
from ..files import input_file
from ..model import EfficientNet
from .convert.base import assign_state_dict
from .errors import CheckpointError
from .io import load_model, model_from_metadata, weights_named

LAST = "last.pt"
BEST = "best.pt"
MODEL = "model.safetensors"
WEIGHT_CHOICES = ("auto", "model", "ema")
EXPORTED = {".pte": "an ExecuTorch program", ".tflite": "a LiteRT (TensorFlow Lite) model"}


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only``), with errors that say what to do."""
    path = Path(path)
    input_file(path, "checkpoint")
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path} holds a model's weights only, not a training checkpoint: resume from the "
                              f"run's {LAST} or its folder, or start a new run from it with effnet finetune "
                              f"--from {path}")
    if path.suffix in EXPORTED:
        raise CheckpointError(f"{path} is {EXPORTED[path.suffix]} exported for a device, not a checkpoint: pass the "
                              "checkpoint it was made from (the ship folder's predict.py runs this file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise CheckpointError(
            f"{path} is not a readable effnet checkpoint: truncated or corrupt, not a torch file, or a pickle "
            f"that needs code to load (refused: effnet reads with weights_only=True) ({type(error).__name__}). "
            f"If it is a run's {LAST}, its {BEST} may still be good.") from None
    if not isinstance(state, dict) or "model" not in state or "model_meta" not in state:
        raise CheckpointError(f"{path} is a torch file but not an effnet training checkpoint "
                              "(no 'model' and 'model_meta' entries)")
    return state


def model_from_checkpoint(state: dict[str, Any], weights: str = "auto", origin: str = "the checkpoint") -> EfficientNet:
    """Rebuild the trained model of a checkpoint dict.

    ``weights``: ``model`` (raw weights), ``ema`` or ``auto`` (the ones that scored better
    on the validation set when the checkpoint was written).
    """
    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    if weights == "auto":
        weights = state.get("eval_weights", "model")
    if weights == "ema":
        if state.get("ema") is None:
            raise CheckpointError(f"{origin} has no EMA weights (the run had ema.enabled=false); use weights='model'")
        tensors = state["ema"]["module"]
    else:
        tensors = state["model"]
    model = model_from_metadata(state["model_meta"], tensors, origin)
    with weights_named(origin):
        assign_state_dict(model, tensors)
    return model


def load_trained_model(path: str | Path, weights: str = "auto") -> EfficientNet:
    """A trained model from a run's ``.pt`` checkpoint, our ``.safetensors`` or a run directory."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / MODEL, path / BEST, path / LAST]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise InputFileError(f"{path} holds no {MODEL}, {BEST} or {LAST}")
        path = found
    input_file(path, "checkpoint")
    if path.suffix == ".safetensors":
        return load_model(path)
    return model_from_checkpoint(read_training_checkpoint(path), weights, str(path))
