"""The variant catalogue: every published EfficientNet, V1, Lite and V2, as one spec type.

Each :class:`VariantSpec` holds what defines a published network beside the formula: its stage
table and multipliers, head dropout, the image size it trains at, the eval preprocessing of its
default weights and those weights' tag. The model builder (:mod:`effnet.registry`), the weight
sources and ``effnet models`` all read :data:`VARIANTS`; :mod:`effnet.scaling` holds only the
compound-scaling formula, :mod:`effnet.model` only the network.

The published B1-B7 coefficients were tuned by hand and are *not* what the formula gives at
integer phi, which is why they are listed here rather than computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .description import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Preprocessing
from .errors import ConfigError

FAMILIES = ("v1", "lite", "v2")


@dataclass(frozen=True)
class StageSpec:
    """One stage of a base network (B0, or an EfficientNetV2 size), before scaling.

    ``fused`` makes its blocks Fused-MBConv (EfficientNetV2); ``se_ratio`` overrides the
    config's SE ratio for this stage (``None``: the config's; V2's fused stages have 0).
    """

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int
    fused: bool = False
    se_ratio: float | None = None


B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)
"""The base network of EfficientNet V1 and Lite: B0's seven MBConv stages."""


def _fused(repeats: int, stride: int, expand_ratio: int, out_channels: int) -> StageSpec:
    return StageSpec(repeats, 3, stride, expand_ratio, out_channels, fused=True, se_ratio=0.0)


V2_BASE_STAGES: tuple[StageSpec, ...] = (
    _fused(1, 1, 1, 16), _fused(2, 2, 4, 32), _fused(2, 2, 4, 48),
    StageSpec(3, 3, 2, 4, 96), StageSpec(5, 3, 1, 6, 112), StageSpec(8, 3, 2, 6, 192),
)
"""EfficientNetV2-B0..B3 (google/automl efficientnetv2, ``v2_base_block``)."""
V2_S_STAGES: tuple[StageSpec, ...] = (
    _fused(2, 1, 1, 24), _fused(4, 2, 4, 48), _fused(4, 2, 4, 64),
    StageSpec(6, 3, 2, 4, 128), StageSpec(9, 3, 1, 6, 160), StageSpec(15, 3, 2, 6, 256),
)
"""EfficientNetV2-S (google/automl efficientnetv2)."""
V2_M_STAGES: tuple[StageSpec, ...] = (
    _fused(3, 1, 1, 24), _fused(5, 2, 4, 48), _fused(5, 2, 4, 80),
    StageSpec(7, 3, 2, 4, 160), StageSpec(14, 3, 1, 6, 176), StageSpec(18, 3, 2, 6, 304), StageSpec(5, 3, 1, 6, 512),
)
V2_L_STAGES: tuple[StageSpec, ...] = (
    _fused(4, 1, 1, 32), _fused(7, 2, 4, 64), _fused(7, 2, 4, 96),
    StageSpec(10, 3, 2, 4, 192), StageSpec(19, 3, 1, 6, 224), StageSpec(25, 3, 2, 6, 384),
    StageSpec(7, 3, 1, 6, 640),
)
V2_XL_STAGES: tuple[StageSpec, ...] = (
    _fused(4, 1, 1, 32), _fused(8, 2, 4, 64), _fused(8, 2, 4, 96),
    StageSpec(16, 3, 2, 4, 192), StageSpec(24, 3, 1, 6, 256), StageSpec(32, 3, 2, 6, 512),
    StageSpec(8, 3, 1, 6, 640),
)


@dataclass(frozen=True)
class VariantSpec:
    """One published network.

    ``family``: ``v1`` (B0-B8, L2), ``lite`` (Lite0-4: ReLU6, no SE, stem and head widths and
    the first and last stages' depths fixed) or ``v2``. ``preprocessing``: the eval
    preprocessing its default weights were measured with (its ``resolution`` is the network's
    native size). ``train_resolution``: the size it trains at (EfficientNetV2 trains smaller
    than it is evaluated). ``round_limit``: the channel rounding rule of
    :func:`~effnet.scaling.round_filters`. ``default_weights``: the tag ``pretrained=True``
    loads (see :mod:`effnet.weights.sources`), ``None`` where nothing was published.
    """

    name: str
    family: str
    width: float
    depth: float
    drop_rate: float
    preprocessing: Preprocessing
    train_resolution: int
    stages: tuple[StageSpec, ...] = B0_STAGES
    stem_channels: int = 32
    round_limit: float = 0.9
    default_weights: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown variant family {self.family!r}; choose one of {', '.join(FAMILIES)}")

    @property
    def resolution(self) -> int:
        """The native (eval) image size."""
        return self.preprocessing.resolution

    @property
    def crop_pct(self) -> float:
        return self.preprocessing.crop_pct

    @property
    def lite(self) -> bool:
        return self.family == "lite"

    def architecture(self) -> dict[str, Any]:
        """The :class:`~effnet.model.EfficientNetConfig` fields that make this network."""
        fields: dict[str, Any] = {"width": self.width, "depth": self.depth, "drop_rate": self.drop_rate,
                                  "stages": self.stages, "stem_channels": self.stem_channels,
                                  "round_limit": self.round_limit}
        if self.lite:
            fields.update(activation="relu6", se_ratio=0.0, lite=True)
        return fields


def _v1(name: str, width: float, depth: float, resolution: int, drop_rate: float, crop_pct: float,
        default_weights: str | None) -> VariantSpec:
    return VariantSpec(f"efficientnet_{name}", "v1", width, depth, drop_rate, Preprocessing(resolution, crop_pct),
                       resolution, default_weights=default_weights)


def _lite(index: int, width: float, depth: float, resolution: int, drop_rate: float) -> VariantSpec:
    # Lite0's default is decided at load time (the installed weight package, else tf_lite):
    # see effnet.weights.sources.default_source.
    preprocessing = Preprocessing(resolution, 0.875, "bicubic", INCEPTION_MEAN, INCEPTION_STD)
    return VariantSpec(f"efficientnet_lite{index}", "lite", width, depth, drop_rate, preprocessing, resolution,
                       default_weights="tf_lite")


def _v2(size: str, stages: tuple[StageSpec, ...], width: float, depth: float, stem: int, drop_rate: float,
        train_resolution: int, resolution: int, crop_pct: float, default_weights: str,
        interpolation: str = "bicubic", inception: bool = False) -> VariantSpec:
    mean, std = (INCEPTION_MEAN, INCEPTION_STD) if inception else (IMAGENET_MEAN, IMAGENET_STD)
    round_limit = 0.0 if size.startswith("b") else 0.9  # the reference rounds B0-B3 widths plainly
    return VariantSpec(f"efficientnet_v2_{size}", "v2", width, depth, drop_rate,
                       Preprocessing(resolution, crop_pct, interpolation, mean, std), train_resolution, stages,
                       stem, round_limit, default_weights)


VARIANTS: dict[str, VariantSpec] = {v.name: v for v in (
    _v1("b0", 1.0, 1.0, 224, 0.2, 0.875, "torchvision"),
    _v1("b1", 1.0, 1.1, 240, 0.2, 0.882, "torchvision"),
    _v1("b2", 1.1, 1.2, 260, 0.3, 0.890, "torchvision"),
    _v1("b3", 1.2, 1.4, 300, 0.3, 0.904, "torchvision"),
    _v1("b4", 1.4, 1.8, 380, 0.4, 0.922, "torchvision"),
    _v1("b5", 1.6, 2.2, 456, 0.4, 0.934, "torchvision"),
    _v1("b6", 1.8, 2.6, 528, 0.5, 0.942, "torchvision"),
    _v1("b7", 2.0, 3.1, 600, 0.5, 0.949, "torchvision"),
    _v1("b8", 2.2, 3.6, 672, 0.5, 0.954, "tf_ra"),
    _v1("l2", 4.3, 5.3, 800, 0.5, 0.96, "tf_ns"),
    _lite(0, 1.0, 1.0, 224, 0.2),
    _lite(1, 1.0, 1.1, 240, 0.2),
    _lite(2, 1.1, 1.2, 260, 0.3),
    _lite(3, 1.2, 1.4, 300, 0.3),
    _lite(4, 1.4, 1.8, 380, 0.3),
    # EfficientNetV2: train/eval sizes and dropout as the reference trains them; eval
    # preprocessing as the default weights were measured with (timm's tf_efficientnetv2 ports
    # for B0-B3 and XL, torchvision's for S/M/L).
    _v2("b0", V2_BASE_STAGES, 1.0, 1.0, 32, 0.2, 192, 224, 0.875, "in1k"),
    _v2("b1", V2_BASE_STAGES, 1.0, 1.1, 32, 0.2, 192, 240, 0.882, "in1k"),
    _v2("b2", V2_BASE_STAGES, 1.1, 1.2, 32, 0.3, 208, 260, 0.890, "in1k"),
    _v2("b3", V2_BASE_STAGES, 1.2, 1.4, 32, 0.3, 240, 300, 0.904, "in1k"),
    _v2("s", V2_S_STAGES, 1.0, 1.0, 24, 0.2, 300, 384, 1.0, "torchvision", "bilinear"),
    _v2("m", V2_M_STAGES, 1.0, 1.0, 24, 0.3, 384, 480, 1.0, "torchvision", "bilinear"),
    _v2("l", V2_L_STAGES, 1.0, 1.0, 32, 0.4, 384, 480, 1.0, "torchvision", inception=True),
    _v2("xl", V2_XL_STAGES, 1.0, 1.0, 32, 0.4, 384, 512, 1.0, "in21k_ft_in1k", inception=True),
)}
"""Every published variant by name: B0-B8, L2, Lite0-4, then EfficientNetV2-B0..B3 and S/M/L/XL."""


def variants(family: str | None = None) -> list[VariantSpec]:
    """The published variants, optionally of one family (``v1``, ``lite`` or ``v2``)."""
    return [v for v in VARIANTS.values() if family is None or v.family == family]


def nearest_published(width: float, depth: float, resolution: int, lite: bool = False) -> VariantSpec:
    """The V1 (or, with ``lite``, Lite) variant closest to the given coefficients (log-distance)."""

    def distance(v: VariantSpec) -> float:
        return (math.log(v.width / width) ** 2 + math.log(v.depth / depth) ** 2
                + math.log(v.resolution / resolution) ** 2)

    return min(variants("lite" if lite else "v1"), key=distance)
