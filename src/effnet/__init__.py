"""effnet: EfficientNet models, weights, training, inference, deployment and benchmarks.

The names below are imported on first use (``effnet.create_model`` imports PyTorch then), so
that ``import effnet`` and the command line's ``--help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Classifier": "effnet.infer",
    "CompoundScaling": "effnet.scaling",
    "EfficientNet": "effnet.model",
    "EfficientNetConfig": "effnet.model",
    "FeatureInfo": "effnet.model",
    "LayerOptions": "effnet.layers",
    "ModelDescription": "effnet.description",
    "Preprocessing": "effnet.description",
    "StageSpec": "effnet.variants",
    "VARIANTS": "effnet.variants",
    "VariantSpec": "effnet.variants",
    "config_for_phi": "effnet.registry",
    "create_model": "effnet.factory",
    "entry_for_phi": "effnet.registry",
    "get_entry": "effnet.registry",
    "list_models": "effnet.registry",
    "resolve_config": "effnet.factory",
    "round_filters": "effnet.scaling",
    "round_repeats": "effnet.scaling",
}
_DEPRECATED = {"PUBLISHED_VARIANTS": "effnet.scaling"}  # renamed; the module warns

__all__ = [
    "VARIANTS", "Classifier", "CompoundScaling", "EfficientNet", "EfficientNetConfig", "FeatureInfo", "LayerOptions",
    "ModelDescription", "Preprocessing", "StageSpec", "VariantSpec", "config_for_phi", "create_model", "entry_for_phi",
    "get_entry", "list_models", "resolve_config", "round_filters", "round_repeats",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name) or _DEPRECATED.get(name)
    if module is None:
        raise AttributeError(f"module 'effnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if name in _EXPORTS:
        globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .description import ModelDescription, Preprocessing
    from .factory import create_model, resolve_config
    from .infer import Classifier
    from .layers import LayerOptions
    from .model import EfficientNet, EfficientNetConfig, FeatureInfo
    from .registry import config_for_phi, entry_for_phi, get_entry, list_models
    from .scaling import CompoundScaling, round_filters, round_repeats
    from .variants import VARIANTS, StageSpec, VariantSpec
