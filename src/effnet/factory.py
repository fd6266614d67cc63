"""``create_model``: a name (or config) plus overrides -> an EfficientNet ready to use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .deprecation import warn_renamed
from .description import CUSTOM_NAME, ModelDescription, Preprocessing
from .model import EfficientNet, EfficientNetConfig
from .registry import get_entry
from .weights.pretrained import apply_checkpoint, check_architecture, resolve_checkpoint

_ALIASES = {"act": "activation"}
_RENAMED = {"dropout": "drop_rate"}  # deprecated names, kept for one release
_CONFIG_FIELDS = tuple(f.name for f in fields(EfficientNetConfig))
_INPUT_SIZE = "resolution"  # an override of the preprocessing, not of the architecture


def resolve_config(name: str | EfficientNetConfig, **overrides: Any) -> tuple[EfficientNetConfig, Preprocessing]:
    """The architecture and eval preprocessing for a name or config with overrides applied
    (``resolution`` sets the preprocessing's input size; every other override is a config field)."""
    if isinstance(name, EfficientNetConfig):
        config, preprocessing, display = name, Preprocessing(), "config"
    else:
        entry = get_entry(name)
        config, preprocessing, display = entry.config, entry.preprocessing, name
    changes = {}
    for key, value in overrides.items():
        if key in _RENAMED:
            warn_renamed(f"create_model({key}=...)", f"{_RENAMED[key]}=...")
        field = _ALIASES.get(key, _RENAMED.get(key, key))
        if field == _INPUT_SIZE:
            preprocessing = replace(preprocessing, resolution=value)
        elif field not in _CONFIG_FIELDS:
            raise TypeError(
                f"create_model({display!r}) got an unknown option {key!r}; valid options: "
                f"{', '.join(sorted((*_CONFIG_FIELDS, *_ALIASES, _INPUT_SIZE)))}")
        else:
            changes[field] = value
    return replace(config, **changes), preprocessing


def create_model(name: str | EfficientNetConfig, num_classes: int = 1000,
                 pretrained: bool | str | Path | Mapping[str, Any] | None = None, *, strict_head: bool = False,
                 pretrained_layout: str | None = None, **overrides: Any) -> EfficientNet:
    """Build an EfficientNet by name (see :func:`effnet.list_models`) or from a config.

    Overrides change any :class:`~effnet.model.EfficientNetConfig` field, e.g. ``drop_rate``,
    ``drop_path_rate``, ``activation``, ``padding`` ('symmetric' or TF 'same'),
    ``bn_momentum``, ``bn_eps``, ``in_chans`` or ``width``/``depth``/``resolution``.
    The model carries its description (name, eval preprocessing, class names, weights source)
    as ``model.description``.

    ``pretrained`` loads weights: ``True`` (the variant's default source), a registry tag
    (``"torchvision"``, ``"tf_aa"``, ... see :func:`effnet.weights.list_sources`), a local
    file (``.safetensors``, ``.pth``/``.pt``/``.bin``, Keras ``.h5``), a URL, or a state
    dict in memory (e.g. a torchvision or timm model's ``state_dict()``). The model is
    then built with the padding and BN epsilon those weights were trained with, and gets
    their preprocessing and (for ImageNet heads) ``class_names``. A head that does not fit
    ``num_classes`` is dropped with a warning, or refused with ``strict_head=True``.
    ``pretrained_layout`` names the checkpoint layout when detection cannot tell (e.g.
    ``"timm_tf"`` for a timm ``tf_efficientnet_*`` file without that name).
    """
    model_name = name if isinstance(name, str) else None
    checkpoint = None
    if pretrained:
        checkpoint = resolve_checkpoint(model_name, pretrained, layout=pretrained_layout)
        overrides = {**checkpoint.overrides(model_name), **overrides}
    config, preprocessing = resolve_config(name, **overrides)
    if checkpoint is not None:
        check_architecture(checkpoint, config, model_name or "the given config")
    model = EfficientNet(config, num_classes, ModelDescription(model_name or CUSTOM_NAME, preprocessing))
    return model if checkpoint is None else apply_checkpoint(model, checkpoint, strict_head)
