"""What ``effnet ship`` can build and what it reports: targets, options, recipes and results.

A :class:`Target` names a runtime, a precision and a model file; a :class:`Recipe` is one way
of building a target (layer groups kept in float, the INT8 method). :func:`recipes` lists the
target as asked, then the remedies :class:`ShipOptions` allows, in the order they are tried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..deploy.calibration import DEFAULT_CALIBRATION_IMAGES
from ..deploy.compare import Accuracy, DeploymentRow
from ..deploy.edge import EDGE_RUNTIMES
from ..deploy.quantize import QatSettings, check_groups
from ..errors import ConfigError, EffnetError


@dataclass(frozen=True)
class Target:
    """Where a shipped model runs: its runtime, the precision it computes in, and its file."""

    name: str
    runtime: str
    precision: str
    model_file: str

    @property
    def int8(self) -> bool:
        return self.precision == "int8"


TARGETS = {target.name: target for target in (
    Target("onnxruntime", "onnxruntime", "fp32", "model.onnx"),
    Target("onnxruntime-int8", "onnxruntime", "int8", "model.onnx"),
    Target("openvino", "openvino", "fp32", "model.xml"),
    Target("openvino-bf16", "openvino", "bf16", "model.xml"),
    Target("openvino-int8", "openvino", "int8", "model.xml"),
    Target("torchscript", "torchscript", "fp32", "model.ts"),
    Target("executorch", "executorch", "fp32", "model.pte"),
    Target("executorch-int8", "executorch", "int8", "model.pte"),
    Target("tflite", "litert", "fp32", "model.tflite"),
    Target("tflite-int8", "litert", "int8", "model.tflite"),
)}
FP32_FALLBACK = {"onnxruntime-int8": "onnxruntime", "openvino-int8": "openvino", "openvino-bf16": "openvino",
                 "executorch-int8": "executorch", "tflite-int8": "tflite"}
REMEDIES = ("keep-float-stem", "qat", "fp32")
"""What ``auto_remedy`` tries, in order, after the target as asked: the stem in float (Lite0's folded
stem weights amplify the input's quantization noise), quantization-aware training with the stem in
float, and the target's fp32 sibling."""


def target(name: str) -> Target:
    if name not in TARGETS:
        raise ConfigError(f"unknown ship target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


CHANCE_MARGIN = 5.0
"""Top-1 points above chance (100 / classes) a shipped model must reach unless ``min_top1`` says otherwise."""
DEFAULT_MIN_AGREEMENT = 97.0


@dataclass(frozen=True)
class ShipOptions:
    """How ``effnet ship`` runs. The gate: the shipped model loses at most ``max_drop`` top-1
    points against fp32, answers as fp32 does on at least ``min_agreement`` % of the images, and
    reaches a top-1 of ``min_top1`` % (None: chance plus :data:`CHANCE_MARGIN` points; the fp32
    model is held to it before anything is built). ``keep_float``: layer groups left in float in
    an INT8 target; ``command``: the command line recorded in the report."""

    target: str = "onnxruntime-int8"
    max_drop: float = 1.0
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    min_top1: float | None = None
    auto_remedy: bool = False
    remedies: tuple[str, ...] = REMEDIES
    keep_float: tuple[str, ...] = ()
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    qat: QatSettings = field(default_factory=QatSettings)
    batch_size: int = 32
    threads: int | None = None
    measure_speed: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        target(self.target)
        if not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise ConfigError(f"--max-drop is the top-1 points that may be lost, 0 or more; got {self.max_drop}")
        for flag, value in (("--min-agreement", self.min_agreement), ("--min-top1", self.min_top1)):
            if value is not None and not 0 <= value <= 100:
                raise ConfigError(f"{flag} is a percentage from 0 to 100; got {value}")
        unknown = sorted(set(self.remedies) - set(REMEDIES))
        if unknown:
            raise ConfigError(f"unknown remedy {', '.join(unknown)}; choose from {', '.join(REMEDIES)}")
        object.__setattr__(self, "keep_float", check_groups(self.keep_float))


@dataclass(frozen=True)
class Recipe:
    """One way of building the shipped model: a target, the layer groups kept in float, and the
    INT8 method (``ptq``, ``qat``; ``none`` for float targets)."""

    target: Target
    keep_float: tuple[str, ...] = ()
    method: str = "none"

    def describe(self) -> str:
        parts = [self.target.name]
        if self.method == "qat":
            parts.append("QAT")
        if self.keep_float:
            parts.append("float " + "+".join(self.keep_float))
        return ", ".join(parts)


@dataclass(frozen=True)
class Attempt:
    """A recipe built and measured on the evaluation images, and what keeps it from shipping
    (``problems``; none: accepted)."""

    recipe: Recipe
    accuracy: Accuracy
    drop_points: float
    problems: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return not self.problems


def top1_floor(options: ShipOptions, classes: int) -> float:
    """The lowest top-1 (%) that may ship: ``min_top1``, else chance plus :data:`CHANCE_MARGIN` points."""
    return options.min_top1 if options.min_top1 is not None else 100.0 / classes + CHANCE_MARGIN


def below_floor(top1: float, options: ShipOptions, classes: int) -> str | None:
    """Why a top-1 (a fraction) is too low to ship, or None."""
    floor = top1_floor(options, classes)
    if 100 * top1 >= floor - 1e-9:
        return None
    source = (f"--min-top1 {options.min_top1:g}%" if options.min_top1 is not None else
              f"chance ({100 / classes:.2f}% for {classes} classes) plus {CHANCE_MARGIN:g} points")
    return f"its top-1 {100 * top1:.2f}% is below {floor:.2f}%, {source}"


def gate(accuracy: Accuracy, drop_points: float, options: ShipOptions, classes: int) -> tuple[str, ...]:
    """What keeps a built recipe from shipping: too much top-1 lost, too many answers changed
    from fp32's, or a top-1 too close to chance."""
    problems = []
    if drop_points > options.max_drop + 1e-9:
        problems.append(f"it loses {drop_points:.2f} top-1 points, more than --max-drop {options.max_drop:g}")
    agreement = 100 * accuracy.agreement
    if agreement < options.min_agreement - 1e-9:
        problems.append(f"{100 - agreement:.2f}% of its answers differ from fp32's (agreement {agreement:.2f}%, "
                        f"below --min-agreement {options.min_agreement:g}%)")
    low = below_floor(accuracy.top1, options, classes)
    if low:
        problems.append(low)
    return tuple(problems)


class ShipRefused(EffnetError, ValueError):
    """The fp32 model is no better than chance, or every recipe tried failed the gate; nothing was shipped."""


@dataclass(frozen=True)
class Evaluation:
    """Per-image results on the evaluation set: labels, files, reference and shipped logits."""

    class_names: list[str]
    files: list[Path]
    targets: np.ndarray
    reference: np.ndarray
    shipped: np.ndarray


@dataclass(frozen=True)
class ShipResult:
    """The shipped folder and everything measured on the way."""

    out_dir: Path
    model_name: str
    recipe: Recipe
    attempts: list[Attempt]
    reference: DeploymentRow
    shipped: DeploymentRow
    evaluation: Evaluation
    manifest: dict

    def describe(self) -> str:
        accuracy, reference = self.shipped.accuracy, self.reference.accuracy
        return (f"shipped {self.model_name} as {self.recipe.describe()} to {self.out_dir}: top-1 "
                f"{100 * accuracy.top1:.2f}% (fp32 {100 * reference.top1:.2f}%, drop "
                f"{self.attempts[-1].drop_points:.2f} points), agreement {100 * accuracy.agreement:.2f}%")


def recipes(options: ShipOptions) -> list[Recipe]:
    """The target as asked, then (with ``auto_remedy``) each applicable remedy, in order."""
    asked = target(options.target)
    tried = [Recipe(asked, options.keep_float if asked.int8 else (), "ptq" if asked.int8 else "none")]
    if not options.auto_remedy:
        return tried
    stem = tuple(dict.fromkeys((*options.keep_float, "stem")))
    for remedy in options.remedies:
        if remedy == "keep-float-stem" and asked.int8 and "stem" not in options.keep_float:
            tried.append(Recipe(asked, stem, "ptq"))
        elif remedy == "qat" and asked.int8 and asked.runtime not in EDGE_RUNTIMES:  # edge: PTQ only
            tried.append(Recipe(asked, tuple(g for g in stem if g != "activations"), "qat"))
        elif remedy == "fp32" and asked.name in FP32_FALLBACK:
            tried.append(Recipe(TARGETS[FP32_FALLBACK[asked.name]]))
    return tried
