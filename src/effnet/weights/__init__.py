"""Weights: our checkpoint format, safe loading, converters from other layouts, downloads.

- :mod:`.io`: our safetensors format with metadata (``save_model``, ``load_model``), safe reading.
- :mod:`.convert`: torchvision, timm, EfficientNet-PyTorch and Keras layouts to ours.
- :mod:`.sources`: the published pretrained weights of every variant.
- :mod:`.hub`: the download cache.
- :mod:`.pretrained`: what ``effnet.create_model(..., pretrained=...)`` runs.
- :mod:`.trained`: the models effnet trains (run directories, ``.pt`` checkpoints).
"""

from .errors import CheckpointError, ChecksumError, WeightsUnavailableError
from .hub import cache_dir, download
from .io import load_model, read_metadata, read_tensors, save_model
from .labels import imagenet_class_names
from .pretrained import Checkpoint, apply_checkpoint, load_weights, read_checkpoint, resolve_checkpoint
from .sources import PretrainedSource, default_source, get_source, list_sources
from .trained import load_trained_model, model_from_checkpoint, read_training_checkpoint

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ChecksumError",
    "PretrainedSource",
    "WeightsUnavailableError",
    "apply_checkpoint",
    "cache_dir",
    "default_source",
    "download",
    "get_source",
    "imagenet_class_names",
    "list_sources",
    "model_from_checkpoint",
    "load_model",
    "load_trained_model",
    "load_weights",
    "read_checkpoint",
    "read_metadata",
    "read_tensors",
    "read_training_checkpoint",
    "resolve_checkpoint",
    "save_model",
]
