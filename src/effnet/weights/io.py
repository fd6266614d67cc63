"""Our checkpoint format, and safe reading of any weight file.

Our format is one ``.safetensors`` file whose header carries JSON metadata: the architecture
config, ``num_classes`` and the model's description (name, class names, eval preprocessing,
weights source), everything needed to rebuild the model without guessing. It round-trips
exactly. Training checkpoints carry the same metadata (:func:`model_metadata`), read back by
the same :func:`model_from_metadata`.

:func:`read_tensors` reads ``.safetensors`` and PyTorch pickles (``.pth``, ``.pt``, ``.bin``),
the latter only with ``torch.load(weights_only=True)``: a pickle that needs to run code is
refused. Corrupt, truncated and unsafe files each get their own message, and loading is all
or nothing: a model is only changed once every tensor has been read and checked.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..description import CUSTOM_NAME, ModelDescription, Preprocessing
from ..errors import first_line, short_repr
from ..files import atomic_write, input_file
from ..model import EfficientNet, EfficientNetConfig
from ..variants import StageSpec
from .convert.base import assign_state_dict, check_state_dict
from .errors import CheckpointError, StateDictError, WeightValuesError

FORMAT_NAME = "effnet"
FORMAT_VERSION = 1
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_MAX_HEADER_BYTES = 100_000_000
MAX_CLASSES = 1_000_000
"""The most classes a file's metadata may declare (ImageNet-21k has 21,841)."""
MAX_BLOCKS = 1_000
"""The most blocks a file's metadata may declare (the largest published EfficientNet has about 100)."""
MAX_CHANNELS = 65_536
"""The widest layer a file's metadata may declare."""
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = 0x80
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|global: ([\w.]+)")


def config_to_dict(config: EfficientNetConfig) -> dict[str, Any]:
    return asdict(config)


def config_from_dict(data: dict[str, Any]) -> EfficientNetConfig:
    data = dict(data)
    data.pop("resolution", None)  # files before 0.2 kept the input size in the config; the description has it
    if "dropout" in data and "drop_rate" not in data:  # the name of the head's dropout rate before 0.2
        data["drop_rate"] = data.pop("dropout")
    known = {f.name for f in fields(EfficientNetConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CheckpointError(f"checkpoint config has fields this effnet does not know: {unknown}; "
                              "it was written by a newer effnet, upgrade to read it")
    data["stages"] = tuple(StageSpec(**s) for s in data["stages"])
    return EfficientNetConfig(**data)


def model_metadata(model: EfficientNet, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-able description of a model stored beside its weights (in ``.safetensors``
    files and training checkpoints alike)."""
    description = model.description
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_name": description.name,
        "config": config_to_dict(model.config),
        "num_classes": model.num_classes,
        "class_names": list(description.class_names) if description.class_names is not None else None,
        "preprocessing": description.preprocessing.to_dict(),
        "weights": description.weights,
        "extra": extra or {},
    }


def save_model(model: EfficientNet, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors with its metadata (:func:`model_metadata`); returns the path.

    Describe the model first (``model.describe(class_names=...)``) for its file to carry its
    class names. The write is atomic (:func:`effnet.files.atomic_write`).
    """
    metadata = model_metadata(model, extra)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda temp: save_file(tensors, str(temp), metadata={"effnet": json.dumps(metadata)}))


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, after checking the file is complete."""
    input_file(path, "checkpoint")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is truncated: {size} bytes cannot hold a safetensors header; "
                                  "fetch or save it again")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > _MAX_HEADER_BYTES:
            raise CheckpointError(f"{path} is not a safetensors file (corrupt): its first bytes announce a "
                                  f"{header_size}-byte header; fetch or save it again")
        if header_size > size - 8:
            raise CheckpointError(f"{path} is truncated: its header needs {header_size + 8} bytes, the file has "
                                  f"{size}; fetch or save it again")
        try:
            header = json.loads(handle.read(header_size))
            end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                      default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
            raise CheckpointError(f"{path} is not a safetensors file (corrupt): its header is not valid; "
                                  "fetch or save it again") from None
    if 8 + header_size + end > size:
        raise CheckpointError(f"{path} is truncated: its header describes {8 + header_size + end} bytes, the file "
                              f"has {size} (an interrupted download or copy?); fetch or save it again")
    return header


def tensor_shapes(path: str | Path) -> dict[str, list[int]]:
    """The shape of each tensor of a ``.safetensors`` file, from its header (no tensor is read)."""
    header = _safetensors_header(Path(path))
    return {name: list(entry["shape"]) for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("shape"), list)}


def _read_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    _safetensors_header(path)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt): {error}") from None


def _read_pickle(path: Path, device: str) -> dict[str, Any]:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    is_zip = magic == _ZIP_MAGIC
    if not is_zip and (not magic or magic[0] != _PICKLE_PROTOCOL_OPCODE):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (corrupt, or another format): "
                              "fetch or save it again")
    try:
        loaded = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        found = _GLOBAL.search(str(error))
        if found:
            name = found.group(1) or found.group(2)
            raise CheckpointError(
                f"refused to load {path}: it is a pickle that would run code when loaded (it calls {name}). "
                "effnet reads .pth files with torch.load(weights_only=True), which accepts tensors and plain "
                "containers only, because unpickling can execute anything. If you trust the file's origin, "
                "load it yourself and save just its state_dict (or convert it to .safetensors)") from None
        raise CheckpointError(f"{path} is a corrupt PyTorch checkpoint (it does not unpickle): "
                              "fetch or save it again") from None
    except Exception as error:  # the unpickler raises whatever a corrupt byte stream provokes
        if is_zip and "central directory" in str(error):
            raise CheckpointError(f"{path} is truncated: its zip archive has no end (an interrupted download or "
                                  "copy?); fetch or save it again") from None
        raise CheckpointError(f"{path} is a corrupt PyTorch checkpoint ({type(error).__name__}: "
                              f"{first_line(error)}); "
                              "fetch or save it again") from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return loaded


def read_tensors(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file or a PyTorch pickle, read safely.

    A pickle may hold a training checkpoint (a dict with a nested state dict); see
    :func:`effnet.weights.convert.unwrap_state_dict`.
    """
    path = Path(path)
    input_file(path, "checkpoint")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if path.suffix in SAFETENSORS_SUFFIXES or (path.suffix not in PICKLE_SUFFIXES and magic[:1] not in (b"P", b"\x80")):
        return _read_safetensors(path, device)
    return _read_pickle(path, device)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint written by :func:`save_model`."""
    path = Path(path)
    header = _safetensors_header(path)
    raw = (header.get("__metadata__") or {}).get("effnet")
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without effnet metadata; load it with "
                              "effnet.create_model(name, pretrained=path) to convert its weights")
    try:
        metadata = json.loads(raw)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path} has corrupt effnet metadata (not JSON, or nested too deeply)") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise CheckpointError(f"{path} metadata is of format {found!r}, not {FORMAT_NAME!r}")
    version = metadata.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer effnet (format version {version!r},"
                              f" this one reads up to {FORMAT_VERSION}); upgrade effnet to read it")
    described_model(metadata, path)
    return metadata


def described_model(metadata: Any, origin: str | Path = "the checkpoint") -> tuple[EfficientNetConfig, int,
                                                                                    ModelDescription]:
    """The config, number of classes and description ``metadata`` (:func:`model_metadata`, read
    from a file) gives, after checking every field's type and range; nothing is built. Raises
    :class:`~effnet.weights.errors.CheckpointError` naming the field."""
    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f"{origin}: its metadata does not describe a valid model: {reason}; the file is "
                               "corrupt or was edited, save or fetch it again")

    if not isinstance(metadata, dict):
        raise refuse(f"it is a {type(metadata).__name__}, not a mapping")
    num_classes = metadata.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 0 <= num_classes <= MAX_CLASSES:
        raise refuse(f"num_classes={short_repr(num_classes)} (a whole number from 0 to {MAX_CLASSES:,})")
    names = metadata.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                              or (num_classes and len(names) != num_classes)):
        raise refuse(f"class_names={short_repr(names)} (a list of {num_classes} names, or null)")
    for field in ("model_name", "weights"):
        if not isinstance(metadata.get(field), (str, type(None))):
            raise refuse(f"{field}={short_repr(metadata.get(field))} (a name)")
    try:
        preprocessing = Preprocessing.from_dict(dict(metadata["preprocessing"]))
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise refuse(f"preprocessing: {first_line(error)}") from None
    try:
        config = config_from_dict(dict(metadata["config"]))
        widths = [config.stem_width, config.head_width] + [s.out_channels for s in config.scaled_stages()]
        blocks = sum(s.repeats for s in config.scaled_stages())
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError, ZeroDivisionError) as error:
        raise refuse(f"config: {first_line(error)}") from None
    if not 0 < blocks <= MAX_BLOCKS or max(widths) > MAX_CHANNELS:
        raise refuse(f"config: {blocks} blocks, up to {max(widths)} channels (at most {MAX_BLOCKS} blocks and "
                     f"{MAX_CHANNELS} channels)")
    description = ModelDescription(metadata.get("model_name") or CUSTOM_NAME, preprocessing,
                                   tuple(names) if names is not None else None, metadata.get("weights"))
    return config, num_classes, description


def model_from_metadata(metadata: dict[str, Any], tensors: Mapping[str, Any] | None = None,
                        origin: str | Path = "the checkpoint") -> EfficientNet:
    """An untrained model with the architecture and description of ``metadata``
    (:func:`model_metadata`, checked by :func:`described_model`).

    Given the ``tensors`` the file holds, the model is first built without memory (on the
    ``meta`` device) and every tensor's name, shape and type checked against it
    (:func:`~effnet.weights.convert.base.check_state_dict`): metadata that claims a million
    classes for a file with three is refused before anything is allocated.
    """
    config, num_classes, description = described_model(metadata, origin)
    if tensors is not None:
        try:
            with torch.device("meta"):
                skeleton = EfficientNet(config, num_classes=num_classes, description=description)
        except (RuntimeError, ValueError, TypeError, OverflowError) as error:
            raise CheckpointError(f"{origin}: its metadata does not describe a model that can be built "
                                  f"({first_line(error)}); the file is corrupt or was edited") from None
        try:
            check_state_dict(skeleton, tensors, values=False)
        except WeightValuesError as error:
            raise WeightValuesError(f"{origin}: {error}") from None
        except StateDictError as error:
            raise StateDictError(f"{origin}: its metadata does not match its tensors ({error})") from None
    return EfficientNet(config, num_classes=num_classes, description=description)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> EfficientNet:
    """Rebuild a model saved by :func:`save_model`, with its class names and preprocessing."""
    metadata = read_metadata(path)
    tensors = read_tensors(path, device=str(map_location))
    model = model_from_metadata(metadata, tensors, path)
    with weights_named(path):
        assign_state_dict(model, tensors)
    return model.to(map_location)


@contextlib.contextmanager
def weights_named(origin: str | Path) -> Iterator[None]:
    """Prefix a :class:`~effnet.weights.errors.StateDictError` raised in the block with the file it came from."""
    try:
        yield
    except StateDictError as error:
        raise StateDictError(f"{origin}: {error}") from None
