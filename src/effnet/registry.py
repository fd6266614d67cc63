"""Model names -> architecture configs and evaluation preprocessing.

Published variants come from :data:`effnet.scaling.PUBLISHED_VARIANTS`; any other network is
reachable as ``efficientnet_phi<X>`` (the compound-scaling formula at phi X) or through
explicit ``width``/``depth``/``resolution`` overrides of any name.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from .model import EfficientNetConfig
from .scaling import PUBLISHED_VARIANTS, CompoundScaling, Variant, nearest_published

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a network: the single source every consumer reads.

    Eval: resize the short side to ``resize_size`` (``resolution / crop_pct``) with
    ``interpolation``, center-crop ``resolution``, scale to [0, 1], normalize by mean/std.
    """

    resolution: int
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.resolution <= 0 or not 0 < self.crop_pct <= 1:
            raise ValueError(f"invalid preprocessing: resolution={self.resolution}, crop_pct={self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; choose one of {INTERPOLATIONS}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.resolution / self.crop_pct))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(**data)


@dataclass(frozen=True)
class ModelEntry:
    """A named network: its architecture and the preprocessing its weights expect."""

    name: str
    config: EfficientNetConfig
    preprocessing: Preprocessing


def config_for_variant(variant: Variant) -> EfficientNetConfig:
    """The architecture of a published variant (Lite: ReLU6, no SE, fixed stem/head)."""
    lite = {"activation": "relu6", "se_ratio": 0.0, "lite": True} if variant.lite else {}
    return EfficientNetConfig(width=variant.width, depth=variant.depth, resolution=variant.resolution,
                              dropout=variant.dropout, **lite)


def config_for_phi(phi: float, scaling: CompoundScaling | None = None) -> EfficientNetConfig:
    """The network the compound-scaling formula gives at ``phi``.

    Dropout is taken from the published variant nearest in coefficients.
    """
    scaling = scaling or CompoundScaling()
    width, depth, resolution = scaling.width(phi), scaling.depth(phi), scaling.resolution(phi)
    dropout = nearest_published(width, depth, resolution).dropout
    return EfficientNetConfig(width=width, depth=depth, resolution=resolution, dropout=dropout)


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
        config = config_for_phi(float(match.group(1)))
        crop = nearest_published(config.width, config.depth, config.resolution).crop_pct
        return ModelEntry(name, config, Preprocessing(config.resolution, crop))
    raise ValueError(
        f"unknown model {name!r}. Known models: {', '.join(list_models())}; "
        "or 'efficientnet_phi<X>' for the compound-scaling formula at phi X (e.g. efficientnet_phi1.5)")
