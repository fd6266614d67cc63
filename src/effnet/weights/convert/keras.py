"""Keras ``.h5`` weights of ``keras.applications.EfficientNetB0..B7`` (read with h5py, no TensorFlow).

A tf.keras (Keras 2) file has one group per layer, whose ``weight_names`` attribute lists
datasets such as ``stem_conv/kernel:0`` or ``block1a_dwconv/depthwise_kernel:0``; a whole
model saved as ``.h5`` (Keras 2, or Keras 3's ``model.save("x.h5")``, which names the
depthwise kernel ``block1a_dwconv/kernel``) keeps the same groups under ``model_weights``.
Keras 3's native ``.weights.h5`` is refused: it names layers by type and creation order
(``layers/batch_normalization_10/vars/0``), so only position could pair them.

Layers are ``stem_conv/stem_bn``, ``block{stage}{letter}_{expand_conv, expand_bn, dwconv,
bn, se_reduce, se_expand, project_conv, project_bn}``, ``top_conv/top_bn`` and
``predictions``. Kernels are HWIO and become OIHW; depthwise kernels (H, W, C, 1) become
(C, 1, H, W); the dense kernel (in, out) is transposed. Keras trains in TF: 'SAME' padding
and BatchNormalization's epsilon 1e-3. (Keras pads stride-2 convs explicitly with
``correct_pad``, which equals 'SAME' for a model built with a fixed input size; one built
with ``input_shape=None`` pads every input as if its size were even.)

Preprocessing: a Keras EfficientNet takes pixels in 0..255 and normalizes inside the
network: ``Rescaling(1/255)``, then ``Normalization`` (``(x - mean) / sqrt(variance)``, with
mean and variance stored in the file), and for ``weights="imagenet"`` one more
``Rescaling(1/sqrt(std))`` that exists only in code. Ours takes the normalized tensor, so a
converted file's normalization becomes ``Preprocessing.mean/std``: ``mean`` as stored and
``std = sqrt(variance)``, except for the published ImageNet files, whose ``variance`` holds
the ImageNet standard deviations themselves (see tensorflow/tensorflow#49930): there the
extra rescaling makes ``std = variance``, i.e. the usual ImageNet mean/std on 0..1 pixels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...description import IMAGENET_STD
from ..errors import CheckpointError
from .base import TF_TRAINED, Architecture, Layout, param_key

_BLOCK = re.compile(r"^block(\d+)([a-z])_(expand_conv|expand_bn|dwconv|bn|se_reduce|se_expand|project_conv|project_bn)"
                    r"/(\w+)$")
_TOP = {"stem_conv": "stem.conv", "stem_bn": "stem.bn", "top_conv": "head.conv", "top_bn": "head.bn",
        "predictions": "classifier"}
_BLOCK_MODULES = {"expand_conv": "expand.conv", "expand_bn": "expand.bn", "dwconv": "dw.conv", "bn": "dw.bn",
                  "se_reduce": "se.reduce", "se_expand": "se.expand", "project_conv": "project.conv",
                  "project_bn": "project.bn"}
_VARIABLES = {"kernel": "weight", "depthwise_kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
              "moving_mean": "running_mean", "moving_variance": "running_var"}
NORMALIZATION = "normalization"


@dataclass(frozen=True)
class KerasWeights:
    """The weights of a Keras file under ``layer/variable`` names, in PyTorch layout, and the
    input normalization the network applies to 0..1 pixels (None when the file has none)."""

    tensors: dict[str, torch.Tensor]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def rename(key: str, arch: Architecture) -> str | None:
    """Our key for a Keras ``layer/variable`` name, or None when it has no counterpart."""
    match = _BLOCK.match(key)
    if match is None:
        layer, _, variable = key.partition("/")
        if layer not in _TOP or variable not in _VARIABLES:
            return None
        return param_key(_TOP[layer], _VARIABLES[variable])
    stage_index, block = int(match.group(1)) - 1, ord(match.group(2)) - ord("a")
    if not 0 <= stage_index < len(arch.stages) or block >= arch.stages[stage_index].repeats:
        return None
    param = _VARIABLES.get(match.group(4))
    target = param_key(_BLOCK_MODULES[match.group(3)], param) if param else None
    return f"stages.{stage_index}.{block}.{target}" if target else None


def to_torch_layout(layer: str, variable: str, array: np.ndarray) -> torch.Tensor:
    """A Keras variable as the PyTorch tensor of the same layer."""
    if variable in ("kernel", "depthwise_kernel") and layer.endswith("dwconv") and array.ndim == 4:
        height, width, channels, multiplier = array.shape
        array = array.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, height, width)
    elif variable == "kernel" and array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    elif variable == "kernel" and array.ndim == 2:
        array = array.T
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def normalization_to_mean_std(mean: np.ndarray, variance: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Our mean/std (on 0..1 pixels) for a Keras Normalization layer's stored mean and variance."""
    mean, variance = np.asarray(mean, dtype=np.float64).ravel(), np.asarray(variance, dtype=np.float64).ravel()
    if variance.shape == (3,) and np.allclose(variance, IMAGENET_STD, atol=1e-6):
        std = variance
    else:
        std = np.sqrt(variance)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _is_normalization(layer: str) -> bool:
    return layer == NORMALIZATION or layer.startswith(NORMALIZATION + "_")


def _read_keras2(root) -> dict[str, np.ndarray]:
    arrays = {}
    names = root.attrs.get("layer_names")
    layers = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names is not None else list(root)
    for layer in layers:
        group = root[layer]
        for weight_name in group.attrs.get("weight_names", []):
            weight_name = weight_name.decode() if isinstance(weight_name, bytes) else str(weight_name)
            variable = weight_name.rsplit("/", 1)[-1].split(":")[0]
            arrays[f"{layer}/{variable}"] = np.asarray(group[weight_name])
    return arrays


def read_h5(path: str | Path) -> KerasWeights:
    """Read a Keras EfficientNet ``.h5`` / ``.weights.h5`` file."""
    try:
        import h5py
    except ImportError:
        raise CheckpointError(f"reading the Keras file {path} needs h5py: pip install 'effnet[keras]'") from None
    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            if "layers" in handle and "layer_names" not in handle.attrs:
                raise CheckpointError(
                    f"{path} is a Keras 3 .weights.h5 file, which names layers by type and order "
                    "(layers/batch_normalization_10/...) rather than by name, so its tensors cannot be matched "
                    "safely. Save the Keras model as a whole .h5 instead (model.save('model.h5')) and load that")
            arrays = _read_keras2(handle["model_weights"] if "model_weights" in handle else handle)
    except OSError as error:
        reason = "truncated" if "truncated" in str(error) else "not a readable HDF5 file (corrupt?)"
        raise CheckpointError(f"{path} is {reason}: {error}; fetch or save it again") from None
    mean = std = None
    tensors = {}
    for key, array in arrays.items():
        layer, variable = key.split("/", 1)
        if not _is_normalization(layer):
            tensors[key] = to_torch_layout(layer, variable, array)
    norm_layer = next((k.split("/")[0] for k in arrays if _is_normalization(k.split("/")[0])), None)
    if norm_layer is not None:
        mean, std = normalization_to_mean_std(arrays[f"{norm_layer}/mean"], arrays[f"{norm_layer}/variance"])
        if not all(math.isfinite(s) and s > 0 for s in std):
            mean = std = None
    if not tensors:
        raise CheckpointError(f"{path} holds no Keras layer weights")
    return KerasWeights(tensors, mean, std)


LAYOUT = Layout("keras", "Keras (keras.applications.EfficientNet)", "stem_conv/kernel", rename, TF_TRAINED)
