"""``create_model``: a name (or config) plus overrides -> an EfficientNet ready to use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .model import EfficientNet, EfficientNetConfig
from .registry import Preprocessing, get_entry
from .weights.pretrained import apply_checkpoint, check_architecture, resolve_checkpoint

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


def create_model(name: str | EfficientNetConfig, num_classes: int = 1000,
                 pretrained: bool | str | Path | Mapping[str, Any] | None = None, *, strict_head: bool = False,
                 pretrained_layout: str | None = None, **overrides: Any) -> EfficientNet:
    """Build an EfficientNet by name (see :func:`effnet.list_models`) or from a config.

    Overrides change any :class:`EfficientNetConfig` field, e.g. ``drop_rate``,
    ``drop_path_rate``, ``activation``, ``padding`` ('symmetric' or TF 'same'),
    ``bn_momentum``, ``bn_eps``, ``in_chans`` or ``width``/``depth``/``resolution``.
    The model carries its eval preprocessing as ``model.preprocessing``.

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
    model = EfficientNet(config, num_classes=num_classes)
    model.preprocessing = preprocessing
    model.model_name = model_name or "efficientnet_custom"
    return model if checkpoint is None else apply_checkpoint(model, checkpoint, strict_head)
