"""ImageNet-1k class names, bundled (from torchvision's weight metadata), in class-index order."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names: index i names logit i of every ImageNet checkpoint."""
    return list(_names())
