"""Converters from every public EfficientNet checkpoint family to our state dict.

One module per family (:mod:`.torchvision`, :mod:`.timm`, :mod:`.lukemelas`, :mod:`.keras`);
each renames keys by name and says which padding and BatchNorm epsilon its weights were
trained with (:class:`~.base.TrainedWith`). :func:`detect_layout` recognises a family from
its keys; :func:`convert_state_dict` renames and checks a whole checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from typing import cast

import torch

from ...errors import ConfigError
from ...model import EfficientNetConfig
from ..errors import CheckpointError
from . import keras, lukemelas, timm, torchvision
from .base import (
    PYTORCH_TRAINED,
    TF_TRAINED,
    Architecture,
    Layout,
    TrainedWith,
    assign_state_dict,
    check_state_dict,
    rename_state_dict,
)


def _identity(key: str, arch: Architecture) -> str | None:
    return key


EFFNET = Layout("effnet", "effnet", "stem.conv.weight", _identity, None)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    EFFNET, torchvision.LAYOUT, timm.LAYOUT, timm.TF_LAYOUT, lukemelas.LAYOUT, keras.LAYOUT)}
"""Every known layout by name: effnet, torchvision, timm, timm_tf, lukemelas, keras."""

_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema")
_PREFIXES = ("module.", "model.", "_orig_mod.")


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ConfigError(f"unknown checkpoint layout {name!r}; choose one of {', '.join(LAYOUTS)}") from None


def unwrap_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a training checkpoint's nested state dict is taken, and
    wrapper prefixes (``module.`` from DataParallel, ``model.``, ``_orig_mod.`` from
    torch.compile) are removed."""
    if not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        for key in _CONTAINER_KEYS:
            nested = checkpoint.get(key)
            if isinstance(nested, Mapping) and any(isinstance(v, torch.Tensor) for v in nested.values()):
                checkpoint = nested
                break
    tensors = cast(dict[str, torch.Tensor], dict(checkpoint))  # other values fail the layout check
    for prefix in _PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def detect_layout(keys: Collection[str], hint: str = "") -> Layout:
    """The layout whose keys these are. ``hint`` (a file name or URL) tells timm's TensorFlow
    ports (``tf_efficientnet_*``) from its PyTorch-trained weights, which share their keys."""
    keys = set(keys)
    for layout in (EFFNET, torchvision.LAYOUT, lukemelas.LAYOUT, keras.LAYOUT):
        if layout.matches(keys):
            return layout
    if timm.LAYOUT.matches(keys):
        if "tf_" in hint:
            return timm.TF_LAYOUT
        warnings.warn("timm checkpoint without a name telling how it was trained: assuming a PyTorch-trained "
                      "efficientnet_* (symmetric padding, BN eps 1e-5); for tf_efficientnet_* weights pass "
                      "layout='timm_tf'", stacklevel=2)
        return timm.LAYOUT
    examples = ", ".join(repr(k) for k in sorted(keys)[:3])
    raise CheckpointError(f"not an EfficientNet checkpoint of a known layout (keys such as {examples}); "
                          f"known layouts: {', '.join(LAYOUTS)}")


def convert_state_dict(tensors: Mapping[str, torch.Tensor], config: EfficientNetConfig,
                       layout: Layout | str | None = None, hint: str = "") -> dict[str, torch.Tensor]:
    """A checkpoint's tensors renamed to our keys for the network ``config`` (layout detected
    when not given). Shapes are checked when the result is assigned to a model."""
    tensors = unwrap_state_dict(tensors)
    if isinstance(layout, str):
        layout = get_layout(layout)
    layout = layout or detect_layout(tensors, hint)
    return rename_state_dict(tensors, layout, config)[0]


__all__ = [
    "EFFNET",
    "LAYOUTS",
    "PYTORCH_TRAINED",
    "TF_TRAINED",
    "Layout",
    "TrainedWith",
    "assign_state_dict",
    "check_state_dict",
    "convert_state_dict",
    "detect_layout",
    "get_layout",
    "rename_state_dict",
    "unwrap_state_dict",
]
