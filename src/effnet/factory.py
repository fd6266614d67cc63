"""``create_model``: a name (or config) plus overrides -> an EfficientNet ready to use."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from .model import EfficientNet, EfficientNetConfig
from .registry import Preprocessing, get_entry

_ALIASES = {"drop_rate": "dropout", "act": "activation"}
_CONFIG_FIELDS = tuple(f.name for f in fields(EfficientNetConfig))


def resolve_config(name: str | EfficientNetConfig, **overrides: Any) -> tuple[EfficientNetConfig, Preprocessing]:
    """The architecture and eval preprocessing for a name or config with overrides applied."""
    if isinstance(name, EfficientNetConfig):
        config = name
        preprocessing = Preprocessing(config.resolution)
        display = "config"
    else:
        entry = get_entry(name)
        config, preprocessing, display = entry.config, entry.preprocessing, name
    changes = {}
    for key, value in overrides.items():
        field = _ALIASES.get(key, key)
        if field not in _CONFIG_FIELDS:
            raise TypeError(
                f"create_model({display!r}) got an unknown option {key!r}; "
                f"valid options: {', '.join(sorted(_CONFIG_FIELDS + tuple(_ALIASES)))}")
        changes[field] = value
    if changes:
        config = replace(config, **changes)
        if config.resolution != preprocessing.resolution:
            preprocessing = replace(preprocessing, resolution=config.resolution)
    return config, preprocessing


def create_model(name: str | EfficientNetConfig, num_classes: int = 1000, **overrides: Any) -> EfficientNet:
    """Build an EfficientNet by name (see :func:`effnet.list_models`) or from a config.

    Overrides change any :class:`EfficientNetConfig` field, e.g. ``drop_rate``,
    ``drop_path_rate``, ``activation``, ``padding`` ('symmetric' or TF 'same'),
    ``bn_momentum``, ``bn_eps``, ``in_chans`` or ``width``/``depth``/``resolution``.
    The model carries its eval preprocessing as ``model.preprocessing``.
    """
    config, preprocessing = resolve_config(name, **overrides)
    model = EfficientNet(config, num_classes=num_classes)
    model.preprocessing = preprocessing
    model.model_name = name if isinstance(name, str) else "efficientnet_custom"
    return model
