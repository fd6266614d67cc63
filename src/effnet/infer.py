"""Inference: a trained network with its labels and preprocessing, from pictures to top-k classes.

:class:`Classifier` holds a model together with its class names and its eval preprocessing,
both taken from the model (that is, from the checkpoint it was loaded from): the one source
of truth, so a picture is prepared exactly as in evaluation. What it accepts as an image:

- a path: decoded by :func:`effnet.data.load_image` (EXIF orientation applied, transparency
  on white, 16-bit scaled, bad files raise :class:`~effnet.data.ImageReadError`);
- a PIL image of any mode (converted to RGB by the same rules);
- a numpy array ``HxW`` or ``HxWxC`` (C = 1, 3 or 4): ``uint8`` 0..255, or float 0..1
  (rounded to 8 bits, as a file would hold it);
- a ``uint8`` tensor ``CxHxW``: pixels, prepared like an array;
- a float tensor ``CxHxW`` or ``1xCxHxW``: **already preprocessed** (resized and normalized
  with :attr:`Classifier.preprocessing`), used as it is.

:meth:`Classifier.predict_batch` streams one :class:`Prediction` per input, in input order;
an input that cannot be read comes back with its ``error`` set instead of stopping the run.
:func:`effnet.predict.collect_images`, :func:`effnet.predict.predict_files` and
:func:`effnet.predict.open_writer` are what ``effnet predict`` runs: files, folders and globs
in, a table, CSV or JSON out.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from effnet_runtime.portable import prediction_record

from .accelerate import CudaGraphRunner, PreparedModel, prepare_for_inference
from .data.device_decode import DeviceBatchTransform, decodes_on_device, read_jpeg_bytes
from .data.images import ImageReadError, load_image, to_rgb
from .data.transforms import eval_transforms
from .deprecation import warn_renamed
from .description import Preprocessing
from .device import AMP_DTYPES, autocast_context, check_amp, resolve_device
from .errors import ConfigError, EffnetError, first_line
from .factory import create_model
from .files import printable_path
from .model import EfficientNet
from .weights.errors import CheckpointError, StateDictError
from .weights.io import read_metadata
from .weights.trained import load_trained_model, read_training_checkpoint

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


class MissingClassNamesWarning(UserWarning):
    """A model without class names: predictions name classes by index ("class_3")."""


@dataclass(frozen=True)
class Prediction:
    """The result for one input: ``top_k`` ``(class_name, probability)`` pairs, best first, and
    their class indices; or, when the input could not be used, ``error`` saying why."""

    source: str
    top_k: tuple[tuple[str, float], ...] = ()
    indices: tuple[int, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        """The most probable class (None for a failed input)."""
        return self.top_k[0][0] if self.top_k else None

    @property
    def probability(self) -> float | None:
        return self.top_k[0][1] if self.top_k else None

    def ranked(self) -> Iterator[tuple[int, int, str, float]]:
        """``(rank, class_index, class_name, probability)`` for each of the top classes, rank 1 first."""
        for rank, ((name, probability), index) in enumerate(zip(self.top_k, self.indices, strict=True), start=1):
            yield rank, index, name, probability

    def record(self, model: str | None, legacy: str | None = None) -> dict[str, Any]:
        """This prediction as a record of :data:`effnet_runtime.portable.PREDICTION_SCHEMA` (``legacy``:
        see :func:`effnet_runtime.portable.prediction_record`)."""
        return prediction_record(self.source, model, [(index, name, probability) for _, index, name, probability
                                                      in self.ranked()], self.error, legacy)


def to_pil(image: Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """An 8-bit RGB PIL image from a PIL image, an ``HxW[xC]`` array or a ``uint8`` ``CxHxW`` tensor.

    Float arrays must hold values in 0..1; they are rounded to 8 bits.
    """
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3:
            raise ConfigError(f"a pixel tensor must be uint8 CxHxW, got {image.dtype} {list(image.shape)}")
        image = image.permute(1, 2, 0).cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ConfigError(f"an image array must be HxW or HxWxC with C = 1, 3 or 4, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
            raise ConfigError(f"a float image array must hold values in 0..1, found {np.nanmin(array):g}.."
                              f"{np.nanmax(array):g}; divide 0..255 data by 255 or pass it as uint8")
        array = np.rint(array * 255.0).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ConfigError(f"an image array must be uint8 (0..255) or float (0..1), got {array.dtype}")
    return to_rgb(Image.fromarray(array))


def prepare_image(image: ImageInput, transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """The model input (float ``CxHxW``) for any accepted image: see the module docstring."""
    if isinstance(image, (str, Path)):
        return transform(load_image(image))
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() != 3:
            raise ConfigError(f"a preprocessed tensor must be CxHxW or 1xCxHxW, got {list(image.shape)}; "
                              "for a batch use Classifier.probabilities")
        return image
    return transform(to_pil(image))


class _PreparedImages(Dataset):
    """Inputs prepared one by one (in DataLoader workers when asked), keeping their failures.
    With ``encoded``, a JPEG file comes as its bytes (1-D) for the device to decode."""

    def __init__(self, images: Sequence[ImageInput], transform: Callable[[Image.Image], torch.Tensor],
                 encoded: bool = False) -> None:
        self.images = images
        self.transform = transform
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str | None]:
        image = self.images[index]
        if self.encoded and isinstance(image, (str, Path)):
            payload = read_jpeg_bytes(Path(image))
            if payload is not None:
                return payload, None
        try:
            return prepare_image(image, self.transform), None
        except ImageReadError as error:
            return None, error.reason
        except ValueError as error:
            return None, str(error)


def _as_list(batch: list) -> list:
    return batch


def _source_name(image: ImageInput, index: int) -> str:
    return printable_path(image) if isinstance(image, (str, Path)) else f"<image {index}>"


def class_name(class_names: Sequence[str] | None, index: int) -> str:
    """The name of class ``index``: from ``class_names``, or ``class_<index>`` without names."""
    return class_names[index] if class_names is not None else f"class_{index}"


def top_classes(probabilities: torch.Tensor, top_k: int, class_names: Sequence[str] | None
                ) -> tuple[tuple[tuple[str, float], ...], tuple[int, ...]]:
    """The ``top_k`` ``(class_name, probability)`` pairs of one image's probabilities, best first,
    and their class indices."""
    values, indices = probabilities.topk(min(top_k, probabilities.numel()))
    index_list = tuple(int(i) for i in indices)
    return tuple((class_name(class_names, i), float(v)) for i, v in zip(index_list, values, strict=True)), index_list


class Classifier:
    """A network ready to classify pictures: model, class names, preprocessing, device, AMP.

    ``class_names`` and ``preprocessing`` default to the model's description
    (``model.description``; another ``nn.Module`` needs ``preprocessing``).
    Without class names, classes are named by index (``class_0``, ``class_1``, ...) and a
    :class:`MissingClassNamesWarning` says so once. ``device``: ``None``/``"auto"`` (CUDA when
    available), ``"cpu"``, ``"cuda:1"`` ...; the model is moved there and put in eval mode.
    ``amp``: ``None`` (full precision), ``"bf16"`` or ``"fp16"`` autocast. ``tta_flip``: average
    the probabilities of each image and its horizontal mirror. ``decode``: where
    :meth:`predict_batch` decodes JPEG files: ``cpu``, ``gpu`` (the device, in batches, see
    :mod:`effnet.data.device_decode`) or ``auto`` (``gpu`` on CUDA devices). ``fast``: run
    through :func:`effnet.accelerate.prepare_for_inference` (BatchNorm folded, fused kernels,
    CUDA graphs on CUDA; the precision is ``amp``'s, fp32 without it) and keep ``model`` as it
    is; ``None``: on CUDA devices, for an EfficientNet, and should the fast path fail there (a
    kernel that does not compile for this GPU, a graph that cannot be captured), a warning says
    so and the model runs as it is from then on; ``True`` lets such a failure through.
    """

    def __init__(self, model: nn.Module, class_names: Sequence[str] | None = None,
                 preprocessing: Preprocessing | None = None, device: str | torch.device | None = None,
                 amp: str | None = None, tta_flip: bool = False, decode: str = "auto",
                 fast: bool | None = None) -> None:
        check_amp(amp)
        description = model.description if isinstance(model, EfficientNet) else None
        if preprocessing is None:
            if description is None:
                raise ConfigError(f"a {type(model).__name__} carries no preprocessing (only an EfficientNet has a "
                                  "description); pass preprocessing=effnet.Preprocessing(resolution, crop_pct, "
                                  "interpolation, mean, std)")
            preprocessing = description.preprocessing
        if class_names is None and description is not None:
            class_names = description.class_names
        num_classes = model.num_classes if isinstance(model, EfficientNet) else None
        if num_classes == 0:
            raise ConfigError("the model has no classifier (num_classes=0): it outputs features, not classes")
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ConfigError(f"{len(class_names)} class names for a model with {num_classes} classes")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.model_name: str = description.name if description is not None else type(model).__name__
        self.preprocessing: Preprocessing = preprocessing
        self.class_names: list[str] | None = list(class_names) if class_names is not None else None
        self.num_classes: int | None = num_classes or (len(class_names) if class_names is not None else None)
        self.amp = amp
        self.tta_flip = tta_flip
        self.fast_fallback = fast is None
        if fast is None:
            fast = _fast_by_default(self.device, model)
        if fast and not isinstance(model, EfficientNet):
            raise ConfigError(f"the fast path runs an effnet EfficientNet, not a {type(model).__name__}; "
                              "use fast=False")
        self.runner: PreparedModel | CudaGraphRunner | None = None
        if fast:
            try:
                self.runner = prepare_for_inference(model, self.device, AMP_DTYPES[amp] if amp else torch.float32)
            except Exception as error:
                if not self.fast_fallback:
                    raise
                self._fast_path_failed(error, stacklevel=3)  # e.g. no device memory left for the prepared copy
        self.transform = eval_transforms(preprocessing)
        self.device_decoder = DeviceBatchTransform(self.transform, self.device) \
            if decodes_on_device(decode, self.device) else None
        if self.class_names is None:
            warnings.warn(f"{self.model_name} has no class names: predictions name classes by index (class_0, "
                          "class_1, ...). Pass class_names=[...], or save the checkpoint with its class names, "
                          "to get names",
                          MissingClassNamesWarning, stacklevel=2)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name: str, weights: bool | str = True, **options: Any) -> Classifier:
        """A registry model with published weights: ``weights`` is ``True`` (the variant's default
        source) or a tag (see :func:`effnet.weights.list_sources`). ``options`` go to the constructor."""
        return cls(create_model(name, pretrained=weights), **options)

    @classmethod
    def from_checkpoint(cls, path: str | Path, model_name: str | None = None, *, num_classes: int | None = None,
                        **options: Any) -> Classifier:
        """A model from a file.

        Without ``model_name``: one of ours, i.e. an effnet ``.safetensors`` (with its metadata),
        a training run's ``best.pt``/``last.pt``, or a run directory. With ``model_name``: any
        weight file a converter reads (torchvision, timm, EfficientNet-PyTorch, Keras, ours),
        built as that architecture with a ``num_classes`` head (default: the size stored in our
        files, else 1000); a file whose head has another size is refused with the size it has.
        """
        if model_name is not None:
            path = Path(path)
            if path.is_dir():
                raise ConfigError(f"{path} is a run directory, which records its architecture: load it without "
                                  f"a model name (drop {model_name!r} / --model)")
            if num_classes is None:
                num_classes = _stored_num_classes(path)
            try:
                model = create_model(model_name, num_classes=num_classes, pretrained=path, strict_head=True)
            except StateDictError as error:
                raise StateDictError(f"{path} does not fit {model_name} (the --model architecture): {error}") from None
            return cls(model, **options)
        try:
            model = load_trained_model(path)
        except StateDictError:
            raise
        except ValueError as error:
            raise ConfigError(f"{error} (if {path} holds another library's weights, give its architecture too: "
                              "Classifier.from_checkpoint(path, model_name='efficientnet_b0'), or effnet "
                              "predict --model NAME --checkpoint FILE)") from None
        return cls(model, **options)

    # --------------------------------------------------------------- running
    def class_name(self, index: int) -> str:
        return class_name(self.class_names, index)

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """The model input (float ``CxHxW``) for one image: see the module docstring."""
        return prepare_image(image, self.transform)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, classes)`` (float32, on the CPU) of a preprocessed ``NxCxHxW`` batch."""
        if batch.dim() != 4 or not batch.is_floating_point():
            raise ConfigError(f"expected a preprocessed float batch NxCxHxW, got {batch.dtype} {list(batch.shape)}")
        batch = batch.to(self.device, non_blocking=True)
        if self.tta_flip:
            batch = torch.cat([batch, batch.flip(3)])
        logits = self._fast_logits(batch) if self.runner is not None else None
        if logits is None:
            with autocast_context(self.device, self.amp):
                logits = self.model(batch)
        probabilities = logits.float().softmax(dim=1)
        if self.tta_flip:
            original, mirrored = probabilities.chunk(2)
            probabilities = (original + mirrored) / 2
        return probabilities.cpu()

    def _fast_logits(self, batch: torch.Tensor) -> torch.Tensor | None:
        """The fast path's logits; ``None`` once it failed where it was chosen by default."""
        assert self.runner is not None, "called only when the fast path was chosen"
        try:
            return self.runner(batch)
        except Exception as error:
            if not self.fast_fallback or isinstance(error, EffnetError):
                raise
            self._fast_path_failed(error, stacklevel=5)  # past probabilities and its decorator
            return None

    def _fast_path_failed(self, error: Exception, stacklevel: int) -> None:
        """Warn that the fast path, chosen by default, failed; the model runs as it is from then on."""
        reason = first_line(error)
        warnings.warn(f"the fast inference path failed on {self.device} ({type(error).__name__}: {reason}); "
                      "running the model as it is from now on (pass fast=False, or --no-fast, to skip it)",
                      RuntimeWarning, stacklevel=stacklevel)
        self.runner = None

    def _decode_on_device(self, batch: list[tuple[torch.Tensor | None, str | None]],
                          names: list[str]) -> list[tuple[torch.Tensor | None, str | None]]:
        """Decode and prepare, on the device and as one batch, the items that came as JPEG bytes."""
        encoded = [p for p, (tensor, _) in enumerate(batch) if tensor is not None and tensor.dim() == 1]
        if not encoded:
            return batch
        assert self.device_decoder is not None, "called only with a device decoder"
        decoded = self.device_decoder.decode([cast(torch.Tensor, batch[p][0]) for p in encoded],
                                             [names[p] for p in encoded])
        batch = list(batch)
        for position, image in zip(encoded, decoded, strict=True):
            batch[position] = (None, image) if isinstance(image, str) else (self.transform(image), None)
        return batch

    def _top(self, probabilities: torch.Tensor, top_k: int) -> tuple[tuple[tuple[str, float], ...], tuple[int, ...]]:
        return top_classes(probabilities, top_k, self.class_names)

    def predict(self, image: ImageInput, top_k: int = 5) -> list[tuple[str, float]]:
        """The ``top_k`` most probable classes of one image as ``(class_name, probability)``, best
        first. A file that cannot be read raises :class:`~effnet.data.ImageReadError`."""
        _check_top_k(top_k)
        probabilities = self.probabilities(self.preprocess(image).unsqueeze(0))[0]
        return list(self._top(probabilities, top_k)[0])

    def predict_batch(self, images: Sequence[ImageInput], batch_size: int = 32, num_workers: int = 0,
                      top_k: int = 5) -> Iterator[Prediction]:
        """One :class:`Prediction` per input, in input order, as each batch finishes.

        Inputs are read and prepared in ``num_workers`` DataLoader processes (0: in this one).
        An input that cannot be used (missing, corrupt or non-image file, bad array) yields a
        Prediction with ``error`` set; the others go on.
        """
        _check_top_k(top_k)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be 0 or more, got {num_workers}")
        return self._stream(list(images), batch_size, num_workers, top_k)

    def _stream(self, images: list[ImageInput], batch_size: int, num_workers: int,
                top_k: int) -> Iterator[Prediction]:
        dataset = _PreparedImages(images, self.transform, encoded=self.device_decoder is not None)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=_as_list, pin_memory=self.device.type == "cuda")
        start = 0
        for batch in loader:
            names = [_source_name(images[start + p], start + p) for p in range(len(batch))]
            batch = self._decode_on_device(batch, names)
            results: list[Prediction | None] = [None] * len(batch)
            by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for position, (tensor, error) in enumerate(batch):
                if tensor is None:
                    results[position] = Prediction(names[position], error=error)
                else:
                    by_shape[tuple(tensor.shape)].append(position)
            for positions in by_shape.values():
                probabilities = self.probabilities(torch.stack([cast(torch.Tensor, batch[p][0]) for p in positions]))
                for position, row in zip(positions, probabilities, strict=True):
                    top, indices = self._top(row, top_k)
                    results[position] = Prediction(names[position], top, indices)
            yield from cast(list[Prediction], results)  # every position was filled
            start += len(batch)


def _fast_by_default(device: torch.device, model: nn.Module) -> bool:
    """Whether a :class:`Classifier` takes the fast path when not told: an EfficientNet on CUDA."""
    return device.type == "cuda" and isinstance(model, EfficientNet)


def _stored_num_classes(path: Path) -> int:
    """The head size recorded in one of our ``.safetensors`` files or training checkpoints;
    1000 (ImageNet) for other files."""
    if path.is_file() and path.suffix in (".safetensors", ".pt", ".pth"):
        try:
            if path.suffix == ".safetensors":
                return int(read_metadata(path)["num_classes"])
            return int(read_training_checkpoint(path)["model_meta"]["num_classes"])
        except (CheckpointError, KeyError, TypeError, ValueError):  # another library's file
            pass
    return 1000


def _check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")


def load_classifier(model_name: str | None = None, checkpoint: str | Path | None = None, *,
                    num_classes: int | None = None, **options: Any) -> Classifier:
    """The classifier ``effnet predict`` builds: a registry name with its default pretrained
    weights, one of our checkpoints, or (both given) another library's weight file read as
    that architecture (see :meth:`Classifier.from_checkpoint`). ``options`` go to :class:`Classifier`."""
    if checkpoint is not None:
        return Classifier.from_checkpoint(checkpoint, model_name, num_classes=num_classes, **options)
    if model_name is not None:
        return Classifier.from_pretrained(model_name, **options)
    raise ConfigError("no model: give a model name for its pretrained weights (e.g. efficientnet_lite0), "
                      "a checkpoint (an effnet .safetensors, a run's best.pt or a run directory), or both "
                      "to read another library's weight file as that architecture")


__all__ = [
    "Classifier",
    "MissingClassNamesWarning",
    "Prediction",
    "class_name",
    "load_classifier",
    "prepare_image",
    "resolve_device",
    "to_pil",
    "top_classes",
]

_MOVED_TO_PREDICT = ("FORMATS", "CsvWriter", "ImageList", "JsonWriter", "PredictionSummary", "PredictionWriter",
                     "TableWriter", "collect_images", "format_for", "open_writer", "predict_files")


def __getattr__(name: str) -> object:
    if name in _MOVED_TO_PREDICT:  # moved with the rest of `effnet predict`'s file handling
        import effnet.predict

        warn_renamed(f"effnet.infer.{name}", f"effnet.predict.{name}")
        return getattr(effnet.predict, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
