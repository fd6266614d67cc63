"""Training checkpoints: atomic writes, RNG states, and loading trained models back.

A checkpoint is a plain dict saved with ``torch.save`` that ``torch.load(weights_only=True)``
reads: tensors, numbers, strings, lists and dicts only. It is written with
:func:`effnet.files.atomic_write`, so a crash at any moment leaves either the old or the new
file whole.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write
from ..model import EfficientNet
from ..registry import Preprocessing
from ..weights.io import config_from_dict, load_model, save_model

LAST = "last.pt"
BEST = "best.pt"
MODEL = "model.safetensors"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Atomically ``torch.save`` a checkpoint dict."""
    return atomic_write(path, lambda temp: torch.save(state, temp))


def save_model_file(model: EfficientNet, path: str | Path, class_names: list[str],
                    preprocessing: Preprocessing, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write the model in effnet's safetensors format."""
    return atomic_write(path, lambda temp: save_model(model, temp, class_names=class_names,
                                                       preprocessing=preprocessing, extra=extra))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only``), with errors that say what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"{path} is not a readable effnet checkpoint: truncated or corrupt, not a torch file, or "
                         f"a pickle that needs code to load (refused: effnet reads with weights_only=True) "
                         f"({type(error).__name__}). If it is a run's {LAST}, its {BEST} may still be good.") from error
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise ValueError(f"{path} is a torch file but not an effnet training checkpoint "
                         "(no 'model' and 'model_config' entries)")
    return state


def resolve_resume(path: str | Path) -> Path:
    """``--resume`` accepts a run directory (its ``last.pt``) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        candidate = path / LAST
        if not candidate.is_file():
            raise FileNotFoundError(f"run directory {path} has no {LAST} to resume from")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume from {path}: no such run directory or checkpoint")
    return path


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, in ``weights_only``-loadable types."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_from_checkpoint(state: dict[str, Any], weights: str = "auto") -> EfficientNet:
    """Rebuild the trained model of a checkpoint dict.

    ``weights``: ``model`` (raw weights), ``ema`` or ``auto`` (the ones that scored better
    on the validation set when the checkpoint was written).
    """
    if weights == "auto":
        weights = state.get("eval_weights", "model")
    if weights == "ema":
        if state.get("ema") is None:
            raise ValueError("this checkpoint has no EMA weights (the run had ema.enabled=false); "
                             "use weights='model'")
        tensors = state["ema"]["module"]
    elif weights == "model":
        tensors = state["model"]
    else:
        raise ValueError(f"weights must be 'auto', 'model' or 'ema', got {weights!r}")
    model = EfficientNet(config_from_dict(state["model_config"]), num_classes=state["num_classes"])
    model.load_state_dict(tensors)
    model.model_name = state["model_name"]
    model.class_names = list(state["class_names"])
    model.preprocessing = Preprocessing.from_dict(state["preprocessing"])
    return model


def load_trained_model(path: str | Path, weights: str = "auto") -> EfficientNet:
    """A trained model from a run's ``.pt`` checkpoint, our ``.safetensors`` or a run directory."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / MODEL, path / BEST, path / LAST]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path} holds no {MODEL}, {BEST} or {LAST}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return load_model(path)
    return model_from_checkpoint(load_checkpoint(path), weights)
