"""Model names -> architecture configs and descriptions (the preprocessing their weights expect).

Published variants (V1, Lite, V2) come from the catalogue :data:`effnet.variants.VARIANTS`;
any other network is reachable as ``efficientnet_phi<X>`` (the
compound-scaling formula at phi X) or through explicit ``width``/``depth``/``resolution``
overrides of any name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .description import ModelDescription, Preprocessing
from .errors import ConfigError
from .model import EfficientNetConfig
from .scaling import CompoundScaling
from .variants import VARIANTS, VariantSpec, nearest_published


@dataclass(frozen=True)
class ModelEntry:
    """A named network: its architecture and the preprocessing its weights expect."""

    name: str
    config: EfficientNetConfig
    preprocessing: Preprocessing

    @property
    def description(self) -> ModelDescription:
        return ModelDescription(self.name, self.preprocessing)


def config_for_variant(variant: VariantSpec) -> EfficientNetConfig:
    """The architecture of a published variant (Lite: ReLU6, no SE, fixed stem/head)."""
    return EfficientNetConfig(**variant.architecture())


def entry_for_phi(phi: float, scaling: CompoundScaling | None = None) -> ModelEntry:
    """The network the compound-scaling formula gives at ``phi``, with its input size.

    Dropout and the eval crop are taken from the published variant nearest in coefficients.
    """
    scaling = scaling or CompoundScaling()
    scaling.check(phi)
    width, depth, resolution = scaling.width(phi), scaling.depth(phi), scaling.resolution(phi)
    nearest = nearest_published(width, depth, resolution)
    config = EfficientNetConfig(width=width, depth=depth, drop_rate=nearest.drop_rate)
    return ModelEntry(f"efficientnet_phi{phi:g}", config, Preprocessing(resolution, nearest.crop_pct))


def config_for_phi(phi: float, scaling: CompoundScaling | None = None) -> EfficientNetConfig:
    """The architecture the compound-scaling formula gives at ``phi`` (see :func:`entry_for_phi`)."""
    return entry_for_phi(phi, scaling).config


_PHI_NAME = re.compile(r"^efficientnet_phi(-?\d+(?:\.\d+)?)$")


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the published variants (V1, Lite, then V2), optionally filtered by a substring."""
    return [name for name in VARIANTS if pattern is None or pattern in name]


def default_train_size(name: str, eval_resolution: int | None = None) -> int:
    """The image size a named network trains at: EfficientNetV2 trains smaller than it is
    evaluated (e.g. V2-S 300 / 384); V1 trains at its eval size. Given the ``eval_resolution``
    of an actual model, that size is returned unless it is the registry's own eval size (a
    model evaluated at another size, or not in the registry, trains at its eval size)."""
    variant = VARIANTS.get(name)
    if eval_resolution is None:
        return variant.train_resolution if variant is not None else get_entry(name).preprocessing.resolution
    if variant is not None and eval_resolution == variant.resolution:
        return variant.train_resolution
    return eval_resolution


def get_entry(name: str) -> ModelEntry:
    """Look up a model name; unknown names get an error that lists the known ones."""
    if name in VARIANTS:
        variant = VARIANTS[name]
        return ModelEntry(name, config_for_variant(variant), variant.preprocessing)
    match = _PHI_NAME.match(name)
    if match:
        entry = entry_for_phi(float(match.group(1)))
        return ModelEntry(name, entry.config, entry.preprocessing)
    raise ConfigError(
        f"unknown model {name!r}. Known models: {', '.join(list_models())}; "
        "or 'efficientnet_phi<X>' for the compound-scaling formula at phi X (e.g. efficientnet_phi1.5)")


def __getattr__(name: str) -> object:
    if name == "V2_VARIANTS":  # moved to the variant catalogue
        from .deprecation import warn_renamed

        warn_renamed("effnet.registry.V2_VARIANTS", "effnet.variants.variants('v2') (or VARIANTS)")
        return {v.name: v for v in VARIANTS.values() if v.family == "v2"}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
