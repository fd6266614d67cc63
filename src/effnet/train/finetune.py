"""Transfer learning: a new head, which layers train, and learning rates by depth.

The network is cut into layer groups, top to bottom: ``classifier``, ``head`` (the 1x1 conv
before pooling), ``stages.6`` ... ``stages.0``, ``stem``. Strategies say which groups train:

- ``linear``: the classifier only (a linear probe of the pretrained features);
- ``full``: every group;
- ``gradual``: the classifier first, then one more group every ``epochs_per_group`` epochs
  from the top (head, stage 6, ..., stem), until everything trains.

Frozen groups have ``requires_grad=False``; their BatchNorm layers must also stay in eval mode
(running statistics unchanged) although the model trains: call :func:`start_epoch` at the
start of each epoch, after ``model.train()``. :func:`layer_decay_groups` gives every group its own
learning rate, ``base_lr * layer_decay ** depth`` (depth 0 = classifier), and no weight decay
on BatchNorm parameters and biases; it includes frozen parameters (they get no gradient, so
no update), so that unfreezing needs no new optimizer. Learning-rate schedules must scale
each group's ``lr_scale`` rather than set one rate for all.

The starting point is a registry model with pretrained weights (``effnet.create_model(name,
pretrained=...)``) or one of our own trained models (:func:`is_trained_checkpoint`,
:func:`start_from_trained`). The trainer applies all of this from the ``finetune`` settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError, InputFileError, first_line
from ..factory import resolve_config
from ..files import input_file
from ..model import EfficientNet
from ..registry import get_entry, list_models
from ..weights.errors import CheckpointError
from ..weights.io import read_metadata
from ..weights.sources import default_source, get_source
from ..weights.trained import load_trained_model, read_training_checkpoint
from .config import FINETUNE_STRATEGIES as STRATEGIES
from .optim import weight_decay_groups


@dataclass(frozen=True)
class LayerGroup:
    """Modules that freeze, unfreeze and share a learning rate together; ``depth`` 0 is the top."""

    name: str
    module: nn.Module
    depth: int


def layer_groups(model: EfficientNet) -> list[LayerGroup]:
    """The model's layer groups, top (classifier) to bottom (stem); together they hold every parameter."""
    named = [("classifier", model.classifier), ("head", model.head)]
    named += [(f"stages.{index}", stage) for index, stage in reversed(list(enumerate(model.stages)))]
    named.append(("stem", model.stem))
    return [LayerGroup(name, module, depth) for depth, (name, module) in enumerate(named)]


def prepare_for_finetuning(model: EfficientNet, num_classes: int, class_names: Sequence[str] | None = None,
                           zero_init: bool = False) -> EfficientNet:
    """Give ``model`` a new, freshly initialised classifier for ``num_classes`` classes (and their
    names); everything else keeps its (pretrained) weights. ``zero_init`` starts the classifier at
    zero (uniform first predictions; see ``ModelSettings.zero_init_head``). Returns the model."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1 to fine-tune a classifier, got {num_classes}")
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for {num_classes} classes")
    device = next(model.parameters()).device
    model.reset_classifier(num_classes, class_names)
    if zero_init:
        model.zero_init_classifier()
    model.classifier.to(device)
    return model


def is_trained_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a model trained with effnet: a run directory, a run's ``.pt``
    checkpoint or a ``.safetensors`` file with effnet metadata (other weight files are for
    ``create_model(pretrained=...)``)."""
    path = Path(path)
    if path.is_dir():
        return True
    if not path.is_file():
        return False
    if path.suffix == ".safetensors":
        try:
            read_metadata(path)
        except CheckpointError:
            return False
        return True
    if path.suffix in (".pt", ".pth"):
        try:
            read_training_checkpoint(path)
        except ValueError:
            return False
        return True
    return False


def _why_not_trained(path: Path) -> str:
    """What reading ``path`` as one of our checkpoints says (truncated, corrupt ...), or nothing."""
    if path.suffix not in (".pt", ".pth", ".safetensors"):
        return ""
    try:
        read_metadata(path) if path.suffix == ".safetensors" else read_training_checkpoint(path)
    except ValueError as error:
        return f": {error}"
    return ""


def start_settings(source: str | Path) -> dict[str, Any]:
    """The ``model.name`` and ``model.pretrained`` settings that start a fine-tuning run from
    ``source``: a registry name (its default pretrained weights, e.g. ``efficientnet_lite0``),
    ``NAME:TAG`` (other published weights, or ``NAME:FILE`` for a weight file of another
    library), or one of our trained models (a run directory, ``.pt`` or ``.safetensors``).
    Unknown names and tags are refused here, before any data is read."""
    text = str(source)
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            input_file(path, "--from")  # a FIFO or a device is refused without being opened
        if is_trained_checkpoint(path):
            return {"model.name": load_trained_model(path).model_name, "model.pretrained": text}
        raise ConfigError(f"{path} is not a model trained with effnet (a run directory, its .pt, or a .safetensors "
                          f"file with effnet metadata){_why_not_trained(path)}; for another library's weight file use "
                          "--from NAME:FILE, e.g. efficientnet_b0:weights.pth")
    name, sep, tag = text.partition(":")
    try:
        get_entry(name)
    except ValueError:
        if _looks_like_path(text):
            raise InputFileError(f"--from {text}: no such run directory or checkpoint file") from None
        raise ConfigError(f"--from {text!r} is neither a known model nor an existing file or run directory. Known "
                          f"models: {', '.join(list_models())} (optionally NAME:TAG for other published weights); "
                          "or give the path of a run directory, .pt or .safetensors file of ours") from None
    if not sep:
        default_source(name)  # models without published weights are refused with the list of those with
        return {"model.name": name, "model.pretrained": True}
    if not tag:
        raise ConfigError(f"--from {text!r}: give the weights after the colon, e.g. {name}:TAG or {name}:FILE")
    if Path(tag).exists():
        input_file(tag, f"--from {name}: weight file")
    elif _looks_like_path(tag):
        raise InputFileError(f"--from {text}: weight file {tag} does not exist")
    else:
        get_source(name, tag)
    return {"model.name": name, "model.pretrained": tag}


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or bool(Path(text).suffix)


def start_from_trained(path: str | Path, class_names: Sequence[str], zero_init_head: bool = False,
                       **overrides: Any) -> EfficientNet:
    """One of our trained models (see :func:`is_trained_checkpoint`; the weights that scored best)
    as the start of a fine-tuning run for ``class_names``.

    ``overrides`` change non-architecture config fields (``drop_rate``, ``drop_path_rate``,
    ``bn_momentum`` ...). The head is replaced by a fresh one unless the model already has
    exactly these classes in this order, in which case training continues from it; a new head
    starts at zero with ``zero_init_head``.
    """
    trained = load_trained_model(path)
    try:
        config, _ = resolve_config(trained.config, **overrides)
    except TypeError as error:
        raise ConfigError(f"model.overrides: {error}") from None
    model = EfficientNet(config, num_classes=trained.num_classes, description=trained.description)
    try:
        model.load_state_dict(trained.state_dict())
    except RuntimeError as error:
        raise ConfigError(f"the overrides {sorted(overrides)} change the architecture of the {trained.model_name} "
                          f"network in {path}, so its weights do not fit; drop them (the checkpoint's own "
                          f"architecture is used): {first_line(error)}") from None
    if model.class_names != list(class_names):
        prepare_for_finetuning(model, len(class_names), class_names, zero_init=zero_init_head)
    return model


@dataclass(frozen=True)
class UnfreezeSchedule:
    """Which layer groups train at each epoch under ``strategy`` (see the module docstring).

    ``gradual``: ``initial_groups`` groups from the top train at epoch 0 (1: the classifier)
    and one more joins every ``epochs_per_group`` epochs.
    """

    strategy: str = "full"
    epochs_per_group: int = 1
    initial_groups: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown fine-tuning strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.epochs_per_group < 1 or self.initial_groups < 1:
            raise ConfigError(f"epochs_per_group and initial_groups must be at least 1, got "
                              f"{self.epochs_per_group} and {self.initial_groups}")

    def trainable_count(self, epoch: int, num_groups: int) -> int:
        """How many groups, counted from the top, train at ``epoch`` (0-based)."""
        if self.strategy == "linear":
            return 1
        if self.strategy == "full":
            return num_groups
        return min(num_groups, self.initial_groups + epoch // self.epochs_per_group)


def unfrozen_groups_at(model: EfficientNet, epoch: int, schedule: UnfreezeSchedule) -> list[str]:
    """The names of the groups that train at ``epoch``, top first."""
    groups = layer_groups(model)
    return [group.name for group in groups[:schedule.trainable_count(epoch, len(groups))]]


def apply_freezing(model: EfficientNet, trainable: Collection[str]) -> None:
    """Let exactly the groups named in ``trainable`` train; the others get ``requires_grad=False``
    and lose any gradient they hold (so no optimizer moves them)."""
    groups = layer_groups(model)
    unknown = sorted(set(trainable) - {group.name for group in groups})
    if unknown:
        raise ConfigError(f"unknown layer groups {unknown}; the groups are {[group.name for group in groups]}")
    for group in groups:
        train = group.name in trainable
        for param in group.module.parameters():
            param.requires_grad_(train)
            if not train:
                param.grad = None


def freeze_bn_of_frozen(model: nn.Module) -> int:
    """Put every BatchNorm layer whose parameters are all frozen in eval mode, so that training
    neither uses batch statistics there nor changes its running statistics. Call it after
    ``model.train()`` (which puts them back in training mode). Returns how many it set."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                count += 1
    return count


def start_epoch(model: EfficientNet, epoch: int, schedule: UnfreezeSchedule) -> list[str]:
    """Everything fine-tuning needs at the start of an epoch, after ``model.train()``: freeze and
    unfreeze by ``schedule`` and keep frozen BatchNorm in eval. Returns the trainable groups."""
    trainable = unfrozen_groups_at(model, epoch, schedule)
    apply_freezing(model, trainable)
    freeze_bn_of_frozen(model)
    return trainable


@contextlib.contextmanager
def _all_trainable(module: nn.Module) -> Iterator[None]:
    """Temporarily mark every parameter trainable (the decay split only looks at trainable ones)."""
    saved = [(param, param.requires_grad) for param in module.parameters()]
    try:
        for param, _ in saved:
            param.requires_grad_(True)
        yield
    finally:
        for param, flag in saved:
            param.requires_grad_(flag)


def layer_decay_groups(model: EfficientNet, base_lr: float, layer_decay: float = 1.0,
                 weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups with discriminative learning rates.

    Each layer group at depth ``d`` (classifier 0, head 1, stage 6 2, ..., stem last) gets
    ``lr = base_lr * layer_decay ** d``, stored as well as ``lr_scale`` for schedules, and is
    split (by :func:`effnet.train.optim.weight_decay_groups`) into weights with ``weight_decay`` and
    BatchNorm parameters plus biases without. Groups are named ``<layer group>`` and
    ``<layer group>.no_decay``. Frozen parameters are included (see the module docstring).
    """
    if base_lr <= 0 or not 0 < layer_decay <= 1 or weight_decay < 0:
        raise ConfigError(f"invalid learning rates: base_lr={base_lr} (> 0), layer_decay={layer_decay} "
                          f"(in (0, 1]), weight_decay={weight_decay} (>= 0)")
    groups = []
    for layer in layer_groups(model):
        scale = layer_decay ** layer.depth
        with _all_trainable(layer.module):
            decay, no_decay = weight_decay_groups(layer.module, weight_decay)
        for part, suffix in ((decay, ""), (no_decay, ".no_decay")):
            if part["params"]:
                groups.append({**part, "lr": base_lr * scale, "lr_scale": scale, "name": layer.name + suffix})
    return groups
