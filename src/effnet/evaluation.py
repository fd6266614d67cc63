"""``effnet eval``: a saved model's accuracy on a folder or CSV of labelled images.

The model is one of ours (a run directory, its ``.pt`` checkpoints or a ``.safetensors``
file); the images are the data's validation split, or all of it. The result carries the
misclassified files (:attr:`~effnet.train.metrics.EvalResult.mistakes`).
"""

from __future__ import annotations

from pathlib import Path

from .data.datasets import VAL_CSV_NAMES, VAL_FOLDER_NAMES, ImageDataset, build_datasets, read_csv, scan_folder
from .data.device_decode import decodes_on_device, device_decode_loader
from .data.loaders import build_loader
from .data.transforms import eval_transforms
from .device import resolve_device
from .errors import ConfigError
from .model import EfficientNet
from .train.metrics import EvalResult, evaluate, find_mistakes
from .weights.trained import load_trained_model


def evaluation_dataset(data: str | Path, val_split: float | None = None, seed: int = 0,
                       follow_links: bool = False) -> ImageDataset:
    """The images to evaluate in ``data``: its validation split (``val/``, ``val.csv``, or the
    ``val_split`` held out with ``seed`` as in training), else every image of a class-folder
    tree or CSV listing. Links leaving ``data`` are skipped unless ``follow_links``."""
    data = Path(data)
    if val_split is not None:
        return build_datasets(data, val_split=val_split, seed=seed, follow_links=follow_links).val
    if data.is_dir():
        if any((data / name).is_dir() for name in VAL_FOLDER_NAMES) or \
                any((data / name).is_file() for name in VAL_CSV_NAMES):
            return build_datasets(data, follow_links=follow_links).val
        if (data / "train").is_dir() or (data / "train.csv").is_file():
            raise ConfigError(f"{data} has a training split but no val/ (or val.csv) to evaluate; pass the "
                              "val_split used in training (--val-split) to evaluate the held-out images")
        return scan_folder(data, follow_links=follow_links)
    if data.is_file() and data.suffix.lower() == ".csv":
        return read_csv(data)
    return build_datasets(data).val  # its errors say what is wrong with the path


def evaluate_checkpoint(path: str | Path, data: str | Path, batch_size: int = 64, num_workers: int = 2,
                        weights: str = "auto", device: str = "auto", val_split: float | None = None,
                        seed: int = 0, decode: str = "auto",
                        follow_links: bool = False) -> tuple[EvalResult, list[str], EfficientNet]:
    """Evaluate a run's ``.pt``, our ``.safetensors`` or a run directory on the images of
    :func:`evaluation_dataset`; returns the metrics (with the misclassified files in
    ``mistakes``), the model's class names and the model. ``decode`` as ``data.decode`` in
    training (:func:`effnet.data.device_decode.decodes_on_device`).

    Classes are matched by name, so the data may list them in another order or hold only some.
    """
    model = load_trained_model(path, weights)
    dataset = evaluation_dataset(data, val_split, seed, follow_links)
    class_names = model.class_names or list(dataset.classes)
    if len(class_names) != model.num_classes:
        raise ConfigError(f"the model has {model.num_classes} outputs but {len(class_names)} class names")
    unknown = [c for c in dataset.classes if c not in class_names]
    if unknown:
        raise ConfigError(f"{data} has classes the model does not know: {unknown}; the model's classes: {class_names}")
    target_map = [class_names.index(c) for c in dataset.classes]
    dataset.transform = eval_transforms(model.preprocessing)
    target = resolve_device(device)
    if decodes_on_device(decode, target):
        loader = device_decode_loader(dataset, batch_size, False, target, num_workers=num_workers)
    else:
        loader = build_loader(dataset, batch_size, train=False, num_workers=num_workers)
    model.to(target)
    result = evaluate(model, loader, len(class_names), target, target_map=target_map, keep_predictions=True)
    result.mistakes = find_mistakes(result.predictions, dataset.samples, class_names, dataset.skipped)
    return result, class_names, model
