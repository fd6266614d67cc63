"""Training configuration: typed sections, their checks, and setting one ``section.key`` by name.

A recipe (:mod:`effnet.train.recipes`) sets some fields; the rest keep the defaults below.
Overrides from the command line go on top, and the fully resolved config is what a run saves
and what a resumed run reads back. Renamed keys (:data:`RENAMED_SETTINGS`) are still read, with
a deprecation warning, so configs saved before a rename keep working.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ..data.device_decode import DECODE_MODES
from ..data.transforms import AUTO_AUGMENTS as auto_augment_policies
from ..deprecation import warn_renamed
from ..description import Preprocessing
from ..device import AMP_MODES
from ..errors import ConfigError
from ..recompute import MEMORY_MODES

LOG = logging.getLogger("effnet.train")
SHORT_RUN_WARMUP = 0.1
"""The share of the run a recipe's warm-up is cut to when the run is not longer than it."""


@dataclass
class ModelSettings:
    """Which network to train; ``None`` rates come from the variant.

    ``pretrained``: ``false``, ``true`` (the variant's default weights), a weights tag or a
    file path (see :func:`effnet.create_model`). ``overrides``: any EfficientNetConfig field.
    ``zero_init_head`` starts the classifier at zero, so that first predictions are uniform:
    the reference init (uniform +-1/sqrt(classes)) gives logits of several units at small
    image sizes, where pooling averages few positions, and slows short runs from scratch.
    ``zero_init_residual`` (networks trained from scratch only) starts every block that has a
    residual connection as the identity, its last BatchNorm scale at zero (like torchvision's
    ResNet option of that name): the signal first passes through the shortcuts, which makes
    the first epochs of short runs much faster.
    """

    name: str = "efficientnet_b0"
    pretrained: bool | str = False
    drop_rate: float | None = None
    drop_path_rate: float | None = None
    zero_init_head: bool = False
    zero_init_residual: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSettings:
    """Where the images are, their sizes, batching and loading.

    ``path``: class folders, ``train/`` + ``val/``, or a CSV listing (see ``effnet.data``).
    ``decode``: where images are decoded and augmented: ``cpu`` (in the loader workers),
    ``gpu`` (workers read JPEG bytes; the training device decodes and augments whole batches,
    see :mod:`effnet.data.device_decode`) or ``auto`` (the CPU until GPU decoding has been
    measured on a GPU; ``gpu`` is one setting away).
    ``img_size`` is the final training size, ``eval_img_size`` the evaluation size and
    ``crop_pct`` the evaluation crop; ``None`` takes the model's (:meth:`resolve_sizes` fills
    them in once, so a run's saved config records the sizes it used). ``allow_single_class``
    lets a dataset of one class train (refused otherwise: it scores 100% learning nothing).
    ``follow_links`` follows links in class folders that lead outside ``path`` (skipped with a
    warning otherwise).
    """

    path: str | None = None
    img_size: int | None = None
    eval_img_size: int | None = None
    crop_pct: float | None = None
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 2
    val_split: float | None = None
    strict: bool = False
    decode: str = "auto"
    allow_single_class: bool = False
    follow_links: bool = False

    def resolve_sizes(self, preprocessing: Preprocessing, min_size: int, train_size: int | None = None) -> None:
        """Fill in the sizes left to the model (``preprocessing``: its eval preprocessing;
        ``train_size``: the size it trains at, when smaller than its eval size as for
        EfficientNetV2) and refuse any below ``min_size``, the network's total stride (smaller
        inputs leave the last stages with nothing to see). A given ``img_size`` is also the
        default eval size."""
        if self.img_size is None and self.eval_img_size is None:
            self.eval_img_size = preprocessing.resolution
        self.img_size = self.img_size or train_size or preprocessing.resolution
        self.eval_img_size = self.eval_img_size or self.img_size
        self.crop_pct = self.crop_pct or preprocessing.crop_pct
        for name, size in (("data.img_size", self.img_size), ("data.eval_img_size", self.eval_img_size)):
            if size < min_size:
                raise ConfigError(f"{name}={size} is below {min_size} px, the smallest input this network can "
                                  f"use (it downsamples by {min_size}); use --img-size {min_size} or more")


@dataclass
class AugmentSettings:
    """The training transform preset, mixup/cutmix and label smoothing."""

    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str | None = None
    ra_magnitude: int = 9
    ra_num_ops: int = 2
    re_prob: float = 0.0
    degrees: float = 0.0
    shear: float = 0.0
    fill: int | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    label_smoothing: float = 0.1


@dataclass
class OptimizerSettings:
    """``adamw``, ``sgd`` (Nesterov by default) or ``rmsprop_tf``.

    With ``lr_base_batch`` set, ``lr`` is per that many images and scales linearly with the
    global batch (batch size x processes x accumulation steps). ``eps`` ``None`` takes the
    optimizer's default (1e-8 for AdamW, 1e-3 for TF RMSprop).
    """

    name: str = "adamw"
    lr: float = 1e-3
    lr_base_batch: int | None = None
    weight_decay: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    alpha: float = 0.9
    eps: float | None = None


@dataclass
class ScheduleSettings:
    """Linear warm-up, then ``cosine`` decay to ``min_lr_ratio * lr`` or the TF ``step`` decay."""

    name: str = "cosine"
    warmup_epochs: float = 1.0
    warmup_lr_ratio: float = 0.01
    min_lr_ratio: float = 0.0
    decay_rate: float = 0.97
    decay_epochs: float = 2.4


@dataclass
class ProgressiveSettings:
    """Progressive resizing from ``start_size`` up to ``data.img_size``.

    ``linear``: the size grows every epoch. ``staged`` (EfficientNetV2): ``stages`` equal
    stages, and RandAugment magnitude, head dropout and mixup alpha grow with the size over
    the given (first, last) ranges. A ``start_size`` at or above the final size means no
    resizing. Sizes are rounded to multiples of ``size_step``. RandAugment
    magnitudes run 0..10 (``effnet.data.transforms``), so EfficientNetV2-S's 5 -> 15 on
    TensorFlow's open-ended scale becomes 5 -> 10 here.
    """

    mode: str = "none"
    start_size: int = 128
    size_step: int = 32
    stages: int = 4
    ra_magnitude: tuple[float, float] = (5.0, 10.0)
    drop_rate: tuple[float, float] = (0.1, 0.3)
    mixup_alpha: tuple[float, float] = (0.0, 0.2)


@dataclass
class EmaSettings:
    """Exponential moving average of the weights, evaluated and saved beside the raw ones."""

    enabled: bool = True
    decay: float = 0.9998
    warmup: bool = True


@dataclass
class RunSettings:
    """How the loop runs: length, device, precision and safety nets.

    ``amp``: ``None``, ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA, with grad scaling).
    ``channels_last``: NHWC activations (faster for depthwise convs on CUDA and on recent CPUs).
    ``keep``: the weights a run keeps (``best.pt``, ``model.safetensors``, the final
    evaluation): ``best``, the epoch and weights (raw or EMA) with the best validation top-1;
    or ``last``, the final epoch's EMA weights (raw without EMA), chosen without looking at
    the validation images, whose top-1 is then an unbiased estimate.
    ``activation_memory``: ``save`` (autograd keeps what backward needs) or ``recompute`` (keep
    convolution outputs only; BatchNorm, activations and SE are recomputed in backward: less
    memory for some compute, same gradients; see :mod:`effnet.recompute`).
    ``check_every``: read the device (non-finite losses, stop signals) once every this many
    updates and at each epoch's end; ``None``: 8 on CUDA, 1 elsewhere. A non-finite loss is
    found within that many updates and stops the run; above 1, the trainer's state goes back
    to what it was after the previous read's update (up to ``check_every - 1`` good updates
    undone; with 1 the bad update is never applied), from a copy of the model, EMA and
    optimizer state that the trainer then keeps on the device.
    """

    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    amp: str | None = None
    channels_last: bool = True
    compile: bool = False
    clip_grad: float | None = None
    accum_steps: int = 1
    sync_bn: bool = False
    deterministic: bool = False
    progress: bool = True
    tensorboard: bool = True
    keep: str = "best"
    activation_memory: str = "save"
    check_every: int | None = None


FINETUNE_STRATEGIES = ("linear", "full", "gradual")


@dataclass
class FinetuneSettings:
    """Which layer groups train when, and their learning rates (see :mod:`effnet.train.finetune`).

    ``strategy``: ``full`` (everything trains, the default), ``linear`` (the classifier only)
    or ``gradual`` (the classifier first, then one more group from the top every
    ``epochs_per_group`` epochs). ``layer_decay`` below 1 gives each group ``lr * layer_decay **
    depth`` (classifier depth 0, stem deepest). The defaults change nothing in plain training.
    """

    strategy: str = "full"
    epochs_per_group: int = 1
    layer_decay: float = 1.0

    @property
    def active(self) -> bool:
        """Whether these settings change the training of a plain run."""
        return self.strategy != "full" or self.layer_decay != 1.0


SECTIONS: dict[str, type] = {
    "model": ModelSettings,
    "data": DataSettings,
    "augment": AugmentSettings,
    "optimizer": OptimizerSettings,
    "schedule": ScheduleSettings,
    "progressive": ProgressiveSettings,
    "ema": EmaSettings,
    "run": RunSettings,
    "finetune": FinetuneSettings,
}

OPTIMIZERS = ("adamw", "sgd", "rmsprop_tf")
SCHEDULES = ("cosine", "step")
PROGRESSIVE_MODES = ("none", "linear", "staged")
KEEP_CHOICES = ("best", "last")
# Model settings with a training setting of their own: model.overrides may not set them.
REGULARIZATION_KEYS = frozenset({"dropout", "drop_rate", "drop_path_rate"})
AUTO_AUGMENTS = (None, *auto_augment_policies)


@dataclass
class TrainConfig:
    """Every setting of a training run, grouped by concern."""

    recipe: str | None = None  # the recipe the settings came from (None: the defaults below)
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    progressive: ProgressiveSettings = field(default_factory=ProgressiveSettings)
    ema: EmaSettings = field(default_factory=EmaSettings)
    run: RunSettings = field(default_factory=RunSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able data (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build and validate a config; unknown sections or keys are refused by name."""
        config = cls()
        for key, value in (data or {}).items():
            if key == "recipe":
                config.recipe = None if value is None else str(value)
                continue
            if key not in SECTIONS:
                raise ConfigError(f"{source}: unknown section {key!r}; valid sections: recipe, {', '.join(SECTIONS)}")
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section {key!r} must be a mapping of settings, got {value!r}")
            for name, item in value.items():
                set_value(config, f"{key}.{name}", item, source)
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse settings that cannot work, with the setting's name and what to use."""
        choices = {
            "optimizer.name": (self.optimizer.name, OPTIMIZERS),
            "schedule.name": (self.schedule.name, SCHEDULES),
            "progressive.mode": (self.progressive.mode, PROGRESSIVE_MODES),
            "augment.auto_augment": (self.augment.auto_augment, AUTO_AUGMENTS),
            "run.amp": (self.run.amp, AMP_MODES),
            "data.decode": (self.data.decode, DECODE_MODES),
            "run.keep": (self.run.keep, KEEP_CHOICES),
            "run.activation_memory": (self.run.activation_memory, MEMORY_MODES),
            "finetune.strategy": (self.finetune.strategy, FINETUNE_STRATEGIES),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")
        positive = {
            "run.epochs": self.run.epochs, "data.batch_size": self.data.batch_size,
            "run.accum_steps": self.run.accum_steps, "optimizer.lr": self.optimizer.lr,
            "progressive.stages": self.progressive.stages, "progressive.size_step": self.progressive.size_step,
            "schedule.decay_epochs": self.schedule.decay_epochs,
            "finetune.epochs_per_group": self.finetune.epochs_per_group,
            **({"run.check_every": self.run.check_every} if self.run.check_every is not None else {}),
        }
        for name, value in positive.items():
            if not 0 < value < math.inf:
                raise ConfigError(f"{name} must be positive and finite, got {value}")
        for name, size in (("data.img_size", self.data.img_size), ("data.eval_img_size", self.data.eval_img_size)):
            if size is not None and size < 1:
                raise ConfigError(f"{name} must be a positive number of pixels, got {size} (leave it unset for the "
                                 "model's own size)")
        if self.data.crop_pct is not None and not 0 < self.data.crop_pct <= 1:
            raise ConfigError(f"data.crop_pct must be in (0, 1], got {self.data.crop_pct}")
        if self.data.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.data.num_workers}")
        if not 0 < self.finetune.layer_decay <= 1:
            raise ConfigError(f"finetune.layer_decay must be in (0, 1] (1: one learning rate for all layers), "
                             f"got {self.finetune.layer_decay}")
        if not 0 <= self.augment.label_smoothing < 1:
            raise ConfigError(f"augment.label_smoothing must be in [0, 1), got {self.augment.label_smoothing}")
        if not 0 <= self.schedule.warmup_epochs < math.inf:
            raise ConfigError(f"schedule.warmup_epochs must be a number of epochs >= 0, got "
                              f"{self.schedule.warmup_epochs}")
        if self.schedule.warmup_epochs >= self.run.epochs:
            self._shorten_warmup()
        if self.model.zero_init_residual and self.model.pretrained:
            raise ConfigError(f"model.zero_init_residual=true would erase the residual blocks of the pretrained "
                             f"weights (model.pretrained={self.model.pretrained}); it is for training from scratch: "
                             f"--set model.zero_init_residual=false")
        regularization = sorted(REGULARIZATION_KEYS & set(self.model.overrides))
        if regularization:
            raise ConfigError(f"model.overrides.{regularization[0]}: set dropout with model.drop_rate and stochastic "
                             "depth with model.drop_path_rate (one setting each)")
        if self.progressive.mode == "staged" and self.model.drop_rate is not None:
            raise ConfigError(f"model.drop_rate={self.model.drop_rate} and progressive.mode=staged both set the "
                             f"dropout rate; staged learning grows it per stage (progressive.drop_rate="
                             f"{list(self.progressive.drop_rate)}): unset model.drop_rate")
        if self.progressive.mode == "staged" and self.augment.auto_augment != "randaugment":
            raise ConfigError("progressive.mode=staged grows the RandAugment magnitude with the image size; "
                             "set augment.auto_augment=randaugment")


    def _shorten_warmup(self) -> None:
        """A warm-up as long as the run would leave no training at the full rate: it becomes
        :data:`SHORT_RUN_WARMUP` of the run instead, with a notice (the saved config records it)."""
        shortened = round(self.run.epochs * SHORT_RUN_WARMUP, 3)
        LOG.warning("notice: schedule.warmup_epochs=%g is not shorter than run.epochs=%d; warming up for %g "
                    "epoch(s) instead (--set schedule.warmup_epochs=... to choose)", self.schedule.warmup_epochs,
                    self.run.epochs, shortened)
        self.schedule.warmup_epochs = shortened


def get_value(config: TrainConfig, key: str) -> Any:
    target, name, _ = _resolve(config, key, "config")
    if isinstance(target, dict):
        return target.get(name)
    return getattr(target, name)


def set_value(config: TrainConfig, key: str, value: Any, source: str = "override") -> None:
    """Set ``section.key`` with type coercion and checks. A mapping such as ``model.overrides`` is
    replaced as a whole, or changed one entry at a time with ``model.overrides.<field>``."""
    target, name, hint = _resolve(config, key, source)
    if isinstance(target, dict):
        target[name] = value
        return
    setattr(target, name, _coerce(value, hint, f"{source}: {key}"))


RENAMED_SETTINGS = {"progressive.dropout": "progressive.drop_rate"}
"""Old setting names still read (with a deprecation warning) -> their current names."""


def _resolve(config: TrainConfig, key: str, source: str) -> tuple[Any, str, Any]:
    if key in RENAMED_SETTINGS:
        warn_renamed(f"the setting {key} ({source})", RENAMED_SETTINGS[key], stacklevel=5)
        key = RENAMED_SETTINGS[key]
    parts = key.split(".")
    if parts[0] not in SECTIONS or len(parts) < 2:
        raise ConfigError(f"{source}: unknown setting {key!r}; settings look like SECTION.KEY with SECTION one of "
                         f"{', '.join(SECTIONS)}")
    section = getattr(config, parts[0])
    hints = typing.get_type_hints(type(section))
    if parts[1] not in hints:
        raise ConfigError(f"{source}: unknown setting {key!r}; {parts[0]} has: {', '.join(hints)}")
    if len(parts) == 2:
        return section, parts[1], hints[parts[1]]
    if len(parts) == 3 and _origin(hints[parts[1]]) is dict:
        return getattr(section, parts[1]), parts[2], None
    raise ConfigError(f"{source}: unknown setting {key!r}")


def _origin(hint: Any) -> Any:
    return typing.get_origin(hint) or hint


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Turn YAML/CLI values into the field's type (``"1e-5"`` -> 1e-5, lists -> tuples)."""
    args = typing.get_args(hint)
    if _origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:
            try:
                return _coerce(value, option, where)
            except ValueError:
                continue
        return _coerce(value, inner[-1], where)
    if _origin(hint) is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} expects a list of {len(args)} values, e.g. [0.08, 1.0]; got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if _origin(hint) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} expects a mapping, got {value!r}")
        return dict(value)
    try:
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
                return value.lower() in ("true", "yes", "on")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is str:
            if value is None or isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} expects {getattr(hint, '__name__', hint)}, got {value!r}") from None
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
