"""What a model is, beside its weights: its name, the preprocessing it expects, its classes
and where its weights came from.

Every :class:`~effnet.model.EfficientNet` carries one :class:`ModelDescription`
(``model.description``); :func:`effnet.weights.io.model_metadata` writes it next to the
weights of every file effnet saves and :func:`effnet.weights.io.model_from_metadata` reads
it back, for ``.safetensors`` models and training checkpoints alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import ConfigError, short_repr

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
DEFAULT_RESOLUTION = 224
MAX_RESOLUTION = 4096
"""The largest input size a preprocessing may give (the largest published EfficientNet takes 800 px)."""
MAX_RESIZE = 2 * MAX_RESOLUTION
"""The largest short side (``resolution / crop_pct``) images may be resized to before the crop."""
CUSTOM_NAME = "efficientnet_custom"


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a network: the single source every consumer reads.

    Eval: resize the short side to ``resize_size`` (``resolution / crop_pct``) with
    ``interpolation``, center-crop ``resolution``, scale to [0, 1], normalize by mean/std.
    """

    resolution: int = DEFAULT_RESOLUTION
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or isinstance(self.resolution, bool) \
                or not 0 < self.resolution <= MAX_RESOLUTION or not isinstance(self.crop_pct, (int, float)) \
                or not 0 < self.crop_pct <= 1:
            raise ConfigError(f"invalid preprocessing: resolution={short_repr(self.resolution)}, crop_pct="
                              f"{short_repr(self.crop_pct)} (the resolution is a number of pixels from 1 to "
                              f"{MAX_RESOLUTION}, crop_pct in (0, 1])")
        if self.resize_size > MAX_RESIZE:
            raise ConfigError(f"invalid preprocessing: resolution={self.resolution} with crop_pct={self.crop_pct!r} "
                              f"resizes images to {self.resize_size:,} px before the crop, more than {MAX_RESIZE}; "
                              "crop_pct is the fraction of the resized image kept, usually 0.875 to 1")
        if not isinstance(self.interpolation, str) or self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"unknown interpolation {short_repr(self.interpolation)}; choose one of "
                              f"{INTERPOLATIONS}")
        try:
            mean, std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        except (TypeError, ValueError):
            mean = std = ()
        if not mean or len(mean) != len(std) or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise ConfigError(f"invalid preprocessing: mean={short_repr(self.mean)}, std={short_repr(self.std)} "
                              "(one finite number per channel each, std positive)")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.resolution / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(**data)


@dataclass(frozen=True)
class ModelDescription:
    """A model's identity: ``name`` (a registry name, or ``efficientnet_custom``), the eval
    ``preprocessing`` its weights expect, ``class_names`` (``None`` when unknown) and
    ``weights`` (where its weights came from: a registry tag, a file, or ``None`` when
    untrained)."""

    name: str = CUSTOM_NAME
    preprocessing: Preprocessing = Preprocessing()
    class_names: tuple[str, ...] | None = None
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))

    def replace(self, **changes: Any) -> ModelDescription:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "preprocessing": self.preprocessing.to_dict(),
                "class_names": list(self.class_names) if self.class_names is not None else None,
                "weights": self.weights}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelDescription:
        return cls(data["name"], Preprocessing.from_dict(data["preprocessing"]), data.get("class_names"),
                   data.get("weights"))
