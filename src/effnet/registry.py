"""Model names -> architecture configs and descriptions (the preprocessing their weights expect).

Published variants come from :data:`effnet.scaling.PUBLISHED_VARIANTS`; any other network is
reachable as ``efficientnet_phi<X>`` (the compound-scaling formula at phi X) or through
explicit ``width``/``depth``/``resolution`` overrides of any name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .description import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, ModelDescription, Preprocessing
from .model import EfficientNetConfig
from .scaling import PUBLISHED_VARIANTS, CompoundScaling, Variant, nearest_published


@dataclass(frozen=True)
class ModelEntry:
    """A named network: its architecture and the preprocessing its weights expect."""

    name: str
    config: EfficientNetConfig
    preprocessing: Preprocessing

    @property
    def description(self) -> ModelDescription:
        return ModelDescription(self.name, self.preprocessing)


def config_for_variant(variant: Variant) -> EfficientNetConfig:
    """The architecture of a published variant (Lite: ReLU6, no SE, fixed stem/head)."""
    lite = {"activation": "relu6", "se_ratio": 0.0, "lite": True} if variant.lite else {}
    return EfficientNetConfig(width=variant.width, depth=variant.depth, dropout=variant.dropout, **lite)


def entry_for_phi(phi: float, scaling: CompoundScaling | None = None) -> ModelEntry:
    """The network the compound-scaling formula gives at ``phi``, with its input size.

    Dropout and the eval crop are taken from the published variant nearest in coefficients.
    """
    scaling = scaling or CompoundScaling()
    width, depth, resolution = scaling.width(phi), scaling.depth(phi), scaling.resolution(phi)
    nearest = nearest_published(width, depth, resolution)
    config = EfficientNetConfig(width=width, depth=depth, dropout=nearest.dropout)
    return ModelEntry(f"efficientnet_phi{phi:g}", config, Preprocessing(resolution, nearest.crop_pct))


def config_for_phi(phi: float, scaling: CompoundScaling | None = None) -> EfficientNetConfig:
    """The architecture the compound-scaling formula gives at ``phi`` (see :func:`entry_for_phi`)."""
    return entry_for_phi(phi, scaling).config


_PHI_NAME = re.compile(r"^efficientnet_phi(-?\d+(?:\.\d+)?)$")


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the published variants, optionally filtered by a substring."""
    return [name for name in PUBLISHED_VARIANTS if pattern is None or pattern in name]


def get_entry(name: str) -> ModelEntry:
    """Look up a model name; unknown names get an error that lists the known ones."""
    if name in PUBLISHED_VARIANTS:
        variant = PUBLISHED_VARIANTS[name]
        mean, std = (INCEPTION_MEAN, INCEPTION_STD) if variant.lite else (IMAGENET_MEAN, IMAGENET_STD)
        return ModelEntry(name, config_for_variant(variant),
                          Preprocessing(variant.resolution, variant.crop_pct, "bicubic", mean, std))
    match = _PHI_NAME.match(name)
    if match:
        entry = entry_for_phi(float(match.group(1)))
        return ModelEntry(name, entry.config, entry.preprocessing)
    raise ValueError(
        f"unknown model {name!r}. Known models: {', '.join(list_models())}; "
        "or 'efficientnet_phi<X>' for the compound-scaling formula at phi X (e.g. efficientnet_phi1.5)")
