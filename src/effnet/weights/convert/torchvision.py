"""torchvision ``efficientnet_b0..b7`` and ``efficientnet_v2_s/m/l`` state dicts.

``features.0`` is the stem (``0`` conv, ``1`` BN), ``features.{s+1}.{j}.block.{k}`` block j
of stage s, where k counts the block's modules: for MBConv expand (absent when the expand
ratio is 1), depthwise, SE (``fc1``, ``fc2``), project; for Fused-MBConv the kxk conv, then
the projection (absent when the expand ratio is 1). The head is ``features.{stages+1}``, the
classifier ``classifier.1`` (``classifier.0`` is dropout). torchvision evaluates all of its
EfficientNet checkpoints with symmetric padding; B0-B4 use ``nn.BatchNorm2d``'s default
epsilon 1e-5, B5-B7 (ports of TF weights by EfficientNet-PyTorch) and V2-S/M/L epsilon 1e-3.
Those are the settings that reproduce its published accuracy.
"""

from __future__ import annotations

import re

from .base import BN_PARAMS, PYTORCH_TRAINED, Architecture, Layout, TrainedWith

_FEATURES = re.compile(r"^features\.(\d+)\.(.+)$")
_BLOCK = re.compile(r"^(\d+)\.block\.(\d+)\.(.+)$")
_CONV_BN = re.compile(r"^([01])\.(\w+)$")
_SE = {"fc1": "reduce", "fc2": "expand"}


def _conv_bn(prefix: str, rest: str) -> str | None:
    match = _CONV_BN.match(rest)
    if not match:
        return None
    index, param = match.groups()
    if index == "0":
        return f"{prefix}.conv.weight" if param == "weight" else None
    return f"{prefix}.bn.{param}" if param in BN_PARAMS else None


def _block(stage_index: int, rest: str, arch: Architecture) -> str | None:
    match = _BLOCK.match(rest)
    if not match:
        return None
    block, module_index, tail = int(match.group(1)), int(match.group(2)), match.group(3)
    stage = arch.stages[stage_index]
    if block >= stage.repeats:
        return None
    if stage.fused:
        modules = ["expand"] + (["project"] if stage.expand_ratio != 1 else [])
    else:
        modules = ((["expand"] if stage.expand_ratio != 1 else []) + ["dw"] + (["se"] if stage.se_ratio > 0 else [])
                   + ["project"])
    if module_index >= len(modules):
        return None
    module = modules[module_index]
    prefix = f"stages.{stage_index}.{block}.{module}"
    if module != "se":
        return _conv_bn(prefix, tail)
    name, _, param = tail.partition(".")
    return f"{prefix}.{_SE[name]}.{param}" if name in _SE and param in ("weight", "bias") else None


def rename(key: str, arch: Architecture) -> str | None:
    """Our key for a torchvision key, or None when it has no counterpart."""
    if key in ("classifier.1.weight", "classifier.1.bias"):
        return "classifier." + key.rsplit(".", 1)[1]
    match = _FEATURES.match(key)
    if not match:
        return None
    index, rest = int(match.group(1)), match.group(2)
    if index == 0:
        return _conv_bn("stem", rest)
    if index == len(arch.stages) + 1:
        return _conv_bn("head", rest)
    if 1 <= index <= len(arch.stages):
        return _block(index - 1, rest, arch)
    return None


_EPS_1E3 = {name: TrainedWith("symmetric", 1e-3) for name in (
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s", "efficientnet_v2_m",
    "efficientnet_v2_l")}
LAYOUT = Layout("torchvision", "torchvision", "features.0.0.weight", rename, PYTORCH_TRAINED, _EPS_1E3)
