"""effnet: EfficientNet models, weights, training, inference, deployment and benchmarks."""

from .description import ModelDescription, Preprocessing
from .factory import create_model, resolve_config
from .infer import Classifier
from .layers import LayerOptions
from .model import EfficientNet, EfficientNetConfig, FeatureInfo, StageSpec
from .registry import config_for_phi, entry_for_phi, get_entry, list_models
from .scaling import PUBLISHED_VARIANTS, CompoundScaling, round_filters, round_repeats

__version__ = "0.1.0"

__all__ = [
    "PUBLISHED_VARIANTS",
    "Classifier",
    "CompoundScaling",
    "EfficientNet",
    "EfficientNetConfig",
    "FeatureInfo",
    "LayerOptions",
    "ModelDescription",
    "Preprocessing",
    "StageSpec",
    "config_for_phi",
    "create_model",
    "entry_for_phi",
    "get_entry",
    "list_models",
    "resolve_config",
    "round_filters",
    "round_repeats",
]
