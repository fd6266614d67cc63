"""The networks measured beside ours: torchvision and timm builders and their published accuracy.

A benchmark name is one of ours (``efficientnet_b0``; see :func:`effnet.list_models`), any
torchvision classification network (``resnet50``), or a name with its source spelled out:
``torchvision:efficientnet_b0``, ``timm:efficientnet_b0``. Every builder makes a network with
random weights: timing needs no download.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial

import torchvision
from torch import nn

from ..errors import ConfigError
from ..factory import create_model
from ..registry import get_entry, list_models

SOURCES = ("effnet", "torchvision", "timm")
TORCHVISION_PEERS = ("resnet50", "resnet152", "densenet169", "mobilenet_v2")
"""The networks EfficientNet is usually compared with (the paper's Table 1 and Figure 1)."""
DEFAULT_MODELS = ("efficientnet_b0", "efficientnet_b1", "efficientnet_b7", "efficientnet_v2_b0",
                  "efficientnet_v2_s") + TORCHVISION_PEERS


@dataclass(frozen=True)
class BenchModel:
    """A network to measure: where it comes from, its native input size and published top-1."""

    name: str
    source: str
    resolution: int
    top1: float | None
    build: Callable[[], nn.Module]


@cache
def timm_available() -> bool:
    """Whether timm can be imported (it is optional: a test and benchmark peer only)."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def build_torchvision(name: str, num_classes: int = 1000, **kwargs: object) -> nn.Module:
    """A torchvision classification network with random weights."""
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def build_timm(name: str, num_classes: int = 1000, **kwargs: object) -> nn.Module:
    """A timm network with random weights (``pretrained=False``)."""
    if not timm_available():
        raise ConfigError(f"timm:{name} needs timm, which is not installed: pip install timm")
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def torchvision_models() -> list[str]:
    """Names of torchvision's ImageNet classification networks."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision_weights(name: str, weights: str = "DEFAULT") -> object | None:
    try:
        return torchvision.models.get_model_weights(name)[weights]
    except (ValueError, KeyError, AttributeError):
        return None


def torchvision_top1(name: str, weights: str = "DEFAULT") -> float | None:
    """ImageNet-1K top-1 (%) of torchvision's ``weights`` for ``name``, from its metadata."""
    found = _torchvision_weights(name, weights)
    if found is None:
        return None
    return found.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")


def torchvision_resolution(name: str) -> int:
    """The eval crop of torchvision's default weights for ``name`` (224 when it has none)."""
    found = _torchvision_weights(name)
    keywords = getattr(getattr(found, "transforms", None), "keywords", {}) or {}
    crop = keywords.get("crop_size", 224)
    return int(crop[0] if isinstance(crop, (list, tuple)) else crop)


def published_top1(name: str) -> float | None:
    """Published ImageNet top-1 (%) of the default pretrained weights of one of our models, from
    the weights registry (:func:`effnet.weights.default_source`); None for a variant without."""
    from ..weights.sources import default_source

    try:
        return default_source(name).top1
    except ValueError:
        return None


def known_models() -> list[str]:
    """Every name :func:`resolve` accepts without a source prefix: ours, then torchvision's."""
    ours = list_models()
    return ours + [name for name in torchvision_models() if name not in ours]


def resolve(name: str) -> BenchModel:
    """The network a benchmark name stands for; unknown names get an error listing the known."""
    source, _, bare = name.rpartition(":")
    if source and source not in SOURCES:
        raise ConfigError(f"unknown source {source!r} in {name!r}; write NAME, torchvision:NAME or timm:NAME")
    if source in ("", "effnet") and _is_ours(bare):
        return BenchModel(name, "effnet", get_entry(bare).preprocessing.resolution, published_top1(bare),
                          partial(create_model, bare))
    if source in ("", "torchvision") and bare in torchvision_models():
        return BenchModel(name, "torchvision", torchvision_resolution(bare), torchvision_top1(bare),
                          partial(build_torchvision, bare))
    if source == "timm":
        return _resolve_timm(name, bare)
    raise ConfigError(f"unknown model {name!r}. Ours: {', '.join(list_models())} (or efficientnet_phi<X>). "
                      f"torchvision: {', '.join(n for n in known_models() if n not in list_models())}. "
                      "Any timm network as timm:NAME; torchvision's EfficientNets as torchvision:efficientnet_b0.")


def _is_ours(name: str) -> bool:
    try:
        get_entry(name)
    except ValueError:
        return False
    return True


def _resolve_timm(name: str, bare: str) -> BenchModel:
    if not timm_available():
        raise ConfigError(f"{name} needs timm, which is not installed: pip install timm")
    import timm

    if not timm.is_model(bare):
        raise ConfigError(f"unknown timm model {bare!r}; timm.list_models('*{bare[:6]}*') lists similar names")
    config = timm.get_pretrained_cfg(bare)
    size = getattr(config, "input_size", None) if config is not None else None
    return BenchModel(name, "timm", int(size[-1]) if size else 224, None, partial(build_timm, bare))
