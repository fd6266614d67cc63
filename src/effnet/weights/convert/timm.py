"""timm ``efficientnet_b*``, ``tf_efficientnet_b*``, ``tf_efficientnet_lite*`` and
``tf_efficientnetv2_*`` state dicts.

Stem ``conv_stem``/``bn1``, head ``conv_head``/``bn2``, ``classifier``. Blocks are
``blocks.{s}.{j}``; a stage with expand ratio 1 holds depthwise-separable blocks
(``conv_dw, bn1, se, conv_pw, bn2``), the others inverted residuals
(``conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3``): the same name ``conv_pw`` is the
projection in the first kind and the expansion in the second. EfficientNetV2's fused stages
hold ``conv, bn1`` (a single conv, expand ratio 1) or edge residuals
(``conv_exp, bn1, conv_pwl, bn2``).

The two kinds of timm checkpoints share these keys but not their training: ``tf_*`` weights
are TensorFlow ports (TF 'SAME' padding, BN epsilon 1e-3), the others were trained in
PyTorch (symmetric padding, epsilon 1e-5). Hence two layouts, ``timm_tf`` and ``timm``.
"""

from __future__ import annotations

import re

from .base import PYTORCH_TRAINED, TF_TRAINED, Architecture, Layout, param_key

_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_TOP = {"conv_stem": "stem.conv", "bn1": "stem.bn", "conv_head": "head.conv", "bn2": "head.bn",
        "classifier": "classifier"}
_SE = {"se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand"}
_DEPTHWISE_SEPARABLE = {"conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "project.conv", "bn2": "project.bn", **_SE}
_INVERTED_RESIDUAL = {"conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "dw.conv", "bn2": "dw.bn",
                      "conv_pwl": "project.conv", "bn3": "project.bn", **_SE}
_FUSED_SINGLE = {"conv": "expand.conv", "bn1": "expand.bn"}
_EDGE_RESIDUAL = {"conv_exp": "expand.conv", "bn1": "expand.bn", "conv_pwl": "project.conv", "bn2": "project.bn"}


def _block_names(fused: bool, expand_ratio: int) -> dict[str, str]:
    if fused:
        return _FUSED_SINGLE if expand_ratio == 1 else _EDGE_RESIDUAL
    return _DEPTHWISE_SEPARABLE if expand_ratio == 1 else _INVERTED_RESIDUAL


def rename(key: str, arch: Architecture) -> str | None:
    """Our key for a timm key, or None when it has no counterpart."""
    match = _BLOCK.match(key)
    if match is None:
        module, _, param = key.rpartition(".")
        return param_key(_TOP[module], param) if module in _TOP else None
    stage_index, block, rest = int(match.group(1)), int(match.group(2)), match.group(3)
    if stage_index >= len(arch.stages) or block >= arch.stages[stage_index].repeats:
        return None
    module, _, param = rest.rpartition(".")
    stage = arch.stages[stage_index]
    names = _block_names(stage.fused, stage.expand_ratio)
    if module not in names:
        return None
    target = param_key(names[module], param)
    return f"stages.{stage_index}.{block}.{target}" if target else None


LAYOUT = Layout("timm", "timm (PyTorch-trained efficientnet_*)", "conv_stem.weight", rename, PYTORCH_TRAINED)
TF_LAYOUT = Layout("timm_tf", "timm (TensorFlow-trained tf_efficientnet_*)", "conv_stem.weight", rename, TF_TRAINED)
