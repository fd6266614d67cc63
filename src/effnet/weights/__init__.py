"""Weights: our checkpoint format, safe loading, converters from other layouts, downloads.

- :mod:`.io`: our safetensors format with metadata (``save_model``, ``load_model``), safe reading.
- :mod:`.convert`: torchvision, timm, EfficientNet-PyTorch and Keras layouts to ours.
- :mod:`.sources`: the published pretrained weights of every variant.
- :mod:`.hub`: the download cache.
- :mod:`.pretrained`: what ``effnet.create_model(..., pretrained=...)`` runs.
"""

from .errors import CheckpointError, ChecksumError, WeightsUnavailableError
from .hub import cache_dir, download
from .io import load_model, read_metadata, read_tensors, save_model
from .labels import imagenet_class_names
from .pretrained import Checkpoint, apply_checkpoint, load_checkpoint, read_checkpoint, resolve_checkpoint
from .sources import PretrainedSource, default_source, get_source, list_sources

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
    "load_checkpoint",
    "load_model",
    "read_checkpoint",
    "read_metadata",
    "read_tensors",
    "resolve_checkpoint",
    "save_model",
]
