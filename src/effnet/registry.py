"""Model names -> architecture configs and descriptions (the preprocessing their weights expect).

Published V1 variants come from :data:`effnet.scaling.PUBLISHED_VARIANTS`, EfficientNetV2 from
:data:`V2_VARIANTS`; any other network is reachable as ``efficientnet_phi<X>`` (the
compound-scaling formula at phi X) or through explicit ``width``/``depth``/``resolution``
overrides of any name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .description import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, ModelDescription, Preprocessing
from .errors import ConfigError
from .model import V2_BASE_STAGES, V2_L_STAGES, V2_M_STAGES, V2_S_STAGES, V2_XL_STAGES, EfficientNetConfig, StageSpec
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


@dataclass(frozen=True)
class V2Variant:
    """One EfficientNetV2 network (google/automl efficientnetv2): architecture, the image size it
    trains at (progressive learning ends there) and the eval preprocessing of its default weights
    (see :func:`effnet.weights.sources.default_source`)."""

    name: str
    stages: tuple[StageSpec, ...]
    width: float
    depth: float
    stem_channels: int
    round_limit: float
    dropout: float
    train_size: int
    preprocessing: Preprocessing

    @property
    def config(self) -> EfficientNetConfig:
        return EfficientNetConfig(width=self.width, depth=self.depth, dropout=self.dropout, stages=self.stages,
                                  stem_channels=self.stem_channels, round_limit=self.round_limit)


def _v2(size: str, stages: tuple[StageSpec, ...], width: float, depth: float, stem: int, dropout: float,
        train_size: int, eval_size: int, crop_pct: float, interpolation: str = "bicubic",
        inception: bool = False) -> V2Variant:
    mean, std = (INCEPTION_MEAN, INCEPTION_STD) if inception else (IMAGENET_MEAN, IMAGENET_STD)
    round_limit = 0.0 if size.startswith("b") else 0.9  # the reference rounds B0-B3 widths plainly
    return V2Variant(f"efficientnet_v2_{size}", stages, width, depth, stem, round_limit, dropout, train_size,
                     Preprocessing(eval_size, crop_pct, interpolation, mean, std))


V2_VARIANTS: dict[str, V2Variant] = {v.name: v for v in (
    _v2("b0", V2_BASE_STAGES, 1.0, 1.0, 32, 0.2, 192, 224, 0.875),
    _v2("b1", V2_BASE_STAGES, 1.0, 1.1, 32, 0.2, 192, 240, 0.882),
    _v2("b2", V2_BASE_STAGES, 1.1, 1.2, 32, 0.3, 208, 260, 0.890),
    _v2("b3", V2_BASE_STAGES, 1.2, 1.4, 32, 0.3, 240, 300, 0.904),
    _v2("s", V2_S_STAGES, 1.0, 1.0, 24, 0.2, 300, 384, 1.0, "bilinear"),
    _v2("m", V2_M_STAGES, 1.0, 1.0, 24, 0.3, 384, 480, 1.0, "bilinear"),
    _v2("l", V2_L_STAGES, 1.0, 1.0, 32, 0.4, 384, 480, 1.0, inception=True),
    _v2("xl", V2_XL_STAGES, 1.0, 1.0, 32, 0.4, 384, 512, 1.0, inception=True),
)}
"""EfficientNetV2-B0..B3 and S/M/L/XL. Train/eval sizes and dropout as the reference trains
them; eval preprocessing as the default weights were measured with (timm's ``tf_efficientnetv2``
ports for B0-B3 and XL, torchvision's for S/M/L)."""


def config_for_variant(variant: Variant) -> EfficientNetConfig:
    """The architecture of a published variant (Lite: ReLU6, no SE, fixed stem/head)."""
    lite = {"activation": "relu6", "se_ratio": 0.0, "lite": True} if variant.lite else {}
    return EfficientNetConfig(width=variant.width, depth=variant.depth, dropout=variant.dropout, **lite)


def entry_for_phi(phi: float, scaling: CompoundScaling | None = None) -> ModelEntry:
    """The network the compound-scaling formula gives at ``phi``, with its input size.

    Dropout and the eval crop are taken from the published variant nearest in coefficients.
    """
    scaling = scaling or CompoundScaling()
    scaling.check(phi)
    width, depth, resolution = scaling.width(phi), scaling.depth(phi), scaling.resolution(phi)
    nearest = nearest_published(width, depth, resolution)
    config = EfficientNetConfig(width=width, depth=depth, dropout=nearest.dropout)
    return ModelEntry(f"efficientnet_phi{phi:g}", config, Preprocessing(resolution, nearest.crop_pct))


def config_for_phi(phi: float, scaling: CompoundScaling | None = None) -> EfficientNetConfig:
    """The architecture the compound-scaling formula gives at ``phi`` (see :func:`entry_for_phi`)."""
    return entry_for_phi(phi, scaling).config


_PHI_NAME = re.compile(r"^efficientnet_phi(-?\d+(?:\.\d+)?)$")


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the published variants (V1, then V2), optionally filtered by a substring."""
    return [name for name in (*PUBLISHED_VARIANTS, *V2_VARIANTS) if pattern is None or pattern in name]


def default_train_size(name: str, eval_resolution: int | None = None) -> int:
    """The image size a named network trains at: EfficientNetV2 trains smaller than it is
    evaluated (e.g. V2-S 300 / 384); V1 trains at its eval size. Given the ``eval_resolution``
    of an actual model, that size is returned unless it is the registry's own eval size (a
    model evaluated at another size, or not in the registry, trains at its eval size)."""
    v2 = V2_VARIANTS.get(name)
    if eval_resolution is None:
        return v2.train_size if v2 is not None else get_entry(name).preprocessing.resolution
    if v2 is not None and eval_resolution == v2.preprocessing.resolution:
        return v2.train_size
    return eval_resolution


def get_entry(name: str) -> ModelEntry:
    """Look up a model name; unknown names get an error that lists the known ones."""
    if name in V2_VARIANTS:
        v2 = V2_VARIANTS[name]
        return ModelEntry(name, v2.config, v2.preprocessing)
    if name in PUBLISHED_VARIANTS:
        variant = PUBLISHED_VARIANTS[name]
        mean, std = (INCEPTION_MEAN, INCEPTION_STD) if variant.lite else (IMAGENET_MEAN, IMAGENET_STD)
        return ModelEntry(name, config_for_variant(variant),
                          Preprocessing(variant.resolution, variant.crop_pct, "bicubic", mean, std))
    match = _PHI_NAME.match(name)
    if match:
        entry = entry_for_phi(float(match.group(1)))
        return ModelEntry(name, entry.config, entry.preprocessing)
    raise ConfigError(
        f"unknown model {name!r}. Known models: {', '.join(list_models())}; "
        "or 'efficientnet_phi<X>' for the compound-scaling formula at phi X (e.g. efficientnet_phi1.5)")
