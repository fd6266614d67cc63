"""Our checkpoint format: one ``.safetensors`` file whose header carries JSON metadata.

The metadata holds everything needed to rebuild the model without guessing: the
architecture config, ``num_classes``, class names and eval preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from ..model import EfficientNet, EfficientNetConfig, StageSpec
from ..registry import Preprocessing

FORMAT_NAME = "effnet"
FORMAT_VERSION = 1


def config_to_dict(config: EfficientNetConfig) -> dict[str, Any]:
    return asdict(config)


def config_from_dict(data: dict[str, Any]) -> EfficientNetConfig:
    data = dict(data)
    data["stages"] = tuple(StageSpec(**s) for s in data["stages"])
    return EfficientNetConfig(**data)


def model_metadata(model: EfficientNet, class_names: list[str] | None = None,
                   preprocessing: Preprocessing | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-able description of a model stored beside its weights."""
    class_names = class_names if class_names is not None else getattr(model, "class_names", None)
    preprocessing = preprocessing or getattr(model, "preprocessing", None) or Preprocessing(model.config.resolution)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_name": getattr(model, "model_name", "efficientnet_custom"),
        "config": config_to_dict(model.config),
        "num_classes": model.num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "preprocessing": preprocessing.to_dict(),
        "extra": extra or {},
    }


def save_model(model: EfficientNet, path: str | Path, class_names: list[str] | None = None,
               preprocessing: Preprocessing | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors with its metadata; returns the path written."""
    path = Path(path)
    metadata = model_metadata(model, class_names, preprocessing, extra)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"effnet": json.dumps(metadata)})
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get("effnet")
    if raw is None:
        raise ValueError(f"{path} is a safetensors file without effnet metadata")
    return json.loads(raw)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> EfficientNet:
    """Rebuild a model saved by :func:`save_model`, with its class names and preprocessing."""
    metadata = read_metadata(path)
    model = EfficientNet(config_from_dict(metadata["config"]), num_classes=metadata["num_classes"])
    model.load_state_dict(load_file(str(path), device=str(map_location)))
    model.model_name = metadata["model_name"]
    model.class_names = metadata["class_names"]
    model.preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
    return model
