"""Compound scaling: the formula of the paper for any phi, and the rounding of channels and
block counts it implies. The published variants, whose B1-B7 coefficients were tuned by hand,
are listed in :mod:`effnet.variants`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError

BASE_RESOLUTION = 224


def round_filters(channels: int, width: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Scale a channel count by ``width`` and round it to a multiple of ``divisor``.

    Rounds to the nearest multiple, never below ``divisor``, and adds one more ``divisor``
    when the result falls below ``round_limit`` times the scaled width (the reference rule:
    0.9, i.e. never lose more than 10%; EfficientNetV2-B0..B3 use 0, plain rounding).
    """
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < round_limit * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by ``depth``, rounding up (ceil, not int)."""
    return int(math.ceil(depth * repeats))


MAX_WIDTH_DEPTH = 8.0
"""The largest width or depth multiplier :meth:`CompoundScaling.check` lets through."""
MIN_WIDTH_DEPTH = 0.01
"""The smallest width or depth multiplier :meth:`CompoundScaling.check` lets through."""
MAX_RESOLUTION = 1024
"""The largest input size (px) :meth:`CompoundScaling.check` lets through."""


@dataclass(frozen=True)
class CompoundScaling:
    """The compound scaling rule: depth alpha^phi, width beta^phi, resolution gamma^phi.

    The paper's grid search on B0 under ``alpha * beta^2 * gamma^2 ~= 2`` found the defaults.
    """

    alpha: float = 1.2
    beta: float = 1.1
    gamma: float = 1.15
    base_resolution: int = BASE_RESOLUTION

    @property
    def flops_base(self) -> float:
        """``alpha * beta^2 * gamma^2``: the factor FLOPs grow by per unit of phi."""
        return self.alpha * self.beta**2 * self.gamma**2

    def flops_growth(self, phi: float) -> float:
        """How many times B0's FLOPs the formula predicts at ``phi``."""
        return self.flops_base**phi

    def depth(self, phi: float) -> float:
        return self.alpha**phi

    def width(self, phi: float) -> float:
        return self.beta**phi

    def resolution(self, phi: float, multiple: int = 8) -> int:
        """Input resolution at ``phi``, rounded to the nearest multiple of ``multiple``."""
        return max(multiple, int(round(self.base_resolution * self.gamma**phi / multiple)) * multiple)

    def check(self, phi: float) -> None:
        """Refuse bases that are not positive finite numbers, and a ``phi`` whose network is not
        finite or could not be built here (beyond :data:`MAX_WIDTH_DEPTH` or :data:`MAX_RESOLUTION`,
        or below :data:`MIN_WIDTH_DEPTH`)."""
        for name, base in (("alpha", self.alpha), ("beta", self.beta), ("gamma", self.gamma)):
            if not 0 < base < math.inf:
                raise ConfigError(f"{name} (--{name}) must be a positive finite number (the paper's is "
                                  f"{getattr(CompoundScaling, name)}), got {base}")
        if not math.isfinite(phi):
            raise ConfigError(f"phi (--phi) must be a finite number, got {phi}")
        try:
            width, depth, resolution = self.width(phi), self.depth(phi), self.base_resolution * self.gamma**phi
        except OverflowError:
            width = depth = resolution = math.inf
        if max(width, depth) > MAX_WIDTH_DEPTH or resolution > MAX_RESOLUTION:
            raise ConfigError(f"phi={phi:g} gives width x{width:.3g}, depth x{depth:.3g} at {resolution:.4g} px, "
                              f"beyond what is built here (at most x{MAX_WIDTH_DEPTH:g} and {MAX_RESOLUTION} px; the "
                              "largest published network, L2, is x4.3, x5.3 at 800 px): use a smaller --phi")
        if min(width, depth) < MIN_WIDTH_DEPTH:
            raise ConfigError(f"phi={phi:g} gives width x{width:.3g}, depth x{depth:.3g}: below x{MIN_WIDTH_DEPTH:g}, "
                              "a network with almost no channels or blocks; use a larger --phi")


def __getattr__(name: str) -> object:
    if name == "PUBLISHED_VARIANTS":  # moved to the variant catalogue
        from .deprecation import warn_renamed
        from .variants import VARIANTS

        warn_renamed("effnet.scaling.PUBLISHED_VARIANTS", "effnet.variants.VARIANTS (V2 included; "
                     "effnet.variants.variants('v1') + variants('lite') for this table)")
        return {name: v for name, v in VARIANTS.items() if v.family != "v2"}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
