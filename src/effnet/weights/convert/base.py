"""What every converter shares: the layout description, renaming by name, and the checks.

A layout renames each of its keys to one of ours from the key's own text (indices are parsed
from the name, never taken from the position in the file). :func:`rename_state_dict` then
refuses keys that map nowhere or twice, and :func:`assign_state_dict` checks every name and
shape against the model before copying anything, so a failed load leaves the model untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ...model import EfficientNetConfig, ScaledStage
from ..errors import CheckpointError, StateDictError

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
BN_PARAMS = ("weight", "bias") + BN_BUFFERS
CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")


@dataclass(frozen=True)
class TrainedWith:
    """The layer settings a checkpoint was trained (and evaluated) with."""

    padding: str
    bn_eps: float

    def overrides(self) -> dict[str, object]:
        return {"padding": self.padding, "bn_eps": self.bn_eps}


TF_TRAINED = TrainedWith("same", 1e-3)
"""TensorFlow-trained weights: 'SAME' padding and BatchNorm epsilon 1e-3."""
PYTORCH_TRAINED = TrainedWith("symmetric", 1e-5)
"""PyTorch-trained weights (and torchvision's ports): symmetric padding, nn.BatchNorm2d's 1e-5."""



@dataclass(frozen=True)
class Architecture:
    """What renaming needs to know of the target network: its stages (block counts, expand
    ratios, which are fused and which have SE)."""

    stages: tuple[ScaledStage, ...]

    @classmethod
    def of(cls, config: EfficientNetConfig) -> Architecture:
        return cls(tuple(config.scaled_stages()))

    @property
    def total_blocks(self) -> int:
        return sum(stage.repeats for stage in self.stages)

    def stage_block(self, flat_index: int) -> tuple[int, int] | None:
        """(stage, block in stage) of a block counted across all stages, or None past the last."""
        for stage_index, stage in enumerate(self.stages):
            if flat_index < stage.repeats:
                return stage_index, flat_index
            flat_index -= stage.repeats
        return None


Renamer = Callable[[str, Architecture], "str | None"]


@dataclass(frozen=True)
class Layout:
    """A family of checkpoints: how to recognise its keys and rename them to ours.

    ``trained_with`` is None for our own format, whose files carry their config;
    ``per_model`` holds the variants a family trained (or evaluates) differently.
    """

    name: str
    description: str
    marker: str
    rename: Renamer
    trained_with: TrainedWith | None
    per_model: Mapping[str, TrainedWith] = field(default_factory=dict)

    def matches(self, keys: Collection[str]) -> bool:
        return self.marker in keys

    def trained_with_for(self, model: str | None) -> TrainedWith | None:
        return self.per_model.get(model or "", self.trained_with)


def param_key(target: str, param: str) -> str | None:
    """``target.param`` when ``param`` exists on our module ``target`` (a BN, conv, SE conv or the classifier)."""
    allowed: tuple[str, ...]
    if target.endswith("bn"):
        allowed = BN_PARAMS
    elif target.startswith("se.") or target == "classifier":
        allowed = ("weight", "bias")
    else:
        allowed = ("weight",)
    return f"{target}.{param}" if param in allowed else None


def rename_state_dict(tensors: Mapping[str, torch.Tensor], layout: Layout,
                      config: EfficientNetConfig) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename a checkpoint's keys to ours; returns the tensors and, per our key, its source key."""
    arch = Architecture.of(config)
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unknown = []
    for key, tensor in tensors.items():
        target = layout.rename(key, arch)
        if target is None:
            unknown.append(key)
            continue
        if target in renamed:
            raise CheckpointError(f"checkpoint keys {origin[target]!r} and {key!r} both map to {target!r}; "
                                  f"the file is not a clean {layout.description} checkpoint")
        renamed[target] = tensor
        origin[target] = key
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} keys of this {layout.description} checkpoint have no place in the model "
            f"({arch.total_blocks} blocks in {len(arch.stages)} stages), e.g. {_examples(unknown)}: the checkpoint "
            "was made for another architecture (a deeper or different variant?) or another layout")
    return renamed, origin


def check_state_dict(model: nn.Module, tensors: Mapping[str, torch.Tensor],
                     origin: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """The complete state dict for ``model`` from ``tensors``, after checking every key and shape.

    BatchNorm's ``num_batches_tracked`` counters (which TensorFlow checkpoints lack) are kept
    from the model when absent; anything else missing, unexpected or of another shape is a
    :class:`~effnet.weights.errors.StateDictError` naming the key and both shapes, and so is a tensor holding NaN or
    infinity (the first one is named).
    """
    origin = origin or {}
    expected = model.state_dict()
    unexpected = [k for k in tensors if k not in expected]
    missing = [k for k in expected if k not in tensors and not k.endswith(".num_batches_tracked")]
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights of the model are missing from the checkpoint, "
                         f"e.g. {_examples(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} checkpoint weights do not exist in the model, "
                         f"e.g. {_examples([origin.get(k, k) for k in unexpected])}")
        raise StateDictError("; ".join(parts) + ": the checkpoint was made for another architecture")
    complete = {}
    for key, current in expected.items():
        tensor = tensors.get(key)
        if tensor is None:
            complete[key] = current.clone()
            continue
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {origin.get(key, key)!r} is a {type(tensor).__name__}, "
                                  "not a tensor")
        if tuple(tensor.shape) != tuple(current.shape):
            source = origin.get(key, key)
            named = f"{source!r} (our {key!r})" if source != key else repr(key)
            raise StateDictError(
                f"shape mismatch for {named}: checkpoint {tuple(tensor.shape)}, model {tuple(current.shape)}; "
                "the checkpoint was made for another architecture (variant, width or number of classes)")
        complete[key] = tensor
    _check_finite(complete, origin)
    return complete


def _check_finite(tensors: Mapping[str, torch.Tensor], origin: Mapping[str, str]) -> None:
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise StateDictError(f"checkpoint weight {origin.get(key, key)!r} holds NaN or infinite values ({bad} of "
                                 f"{tensor.numel()}): the weights are broken (saved from a diverged run?); use an "
                                 "earlier checkpoint")


def assign_state_dict(model: nn.Module, tensors: Mapping[str, torch.Tensor],
                      origin: Mapping[str, str] | None = None) -> None:
    """Check ``tensors`` completely, then copy them into ``model``: all or nothing."""
    model.load_state_dict(check_state_dict(model, tensors, origin), strict=True)


def _examples(keys: Sequence[str], count: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:count])
    return shown + (f" (and {len(keys) - count} more)" if len(keys) > count else "")
