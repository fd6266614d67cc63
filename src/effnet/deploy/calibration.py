"""Images for quantization: calibration batches from any folder, labelled batches for evaluation.

Both use the network's own eval preprocessing (:func:`effnet.data.eval_transforms` of
``model.preprocessing``), so the ranges calibrated are the ranges met in deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data import IMAGE_EXTENSIONS, ImageReadError, build_loader, eval_transforms, load_image, scan_folder
from ..data.datasets import MODEL_CLASSES, image_files_under
from ..description import Preprocessing
from ..errors import ConfigError, InputFileError

DEFAULT_CALIBRATION_IMAGES = 256

logger = logging.getLogger("effnet.deploy")


def find_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (any depth, hidden entries skipped), in sorted path order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"image folder {folder} does not exist" if not folder.exists()
                             else f"{folder} is not a folder of images")
    return image_files_under(folder)


def spread(items: Sequence, count: int) -> list:
    """``count`` items evenly spaced over ``items`` (all of them when there are fewer).

    Sorted class folders stay balanced: every class contributes, not only the first ones.
    """
    if count <= 0:
        raise ConfigError(f"the number of calibration images must be positive, got {count}")
    if len(items) <= count:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


def _images_or_error(folder: str | Path) -> list[Path]:
    paths = find_images(folder)
    if not paths:
        raise ConfigError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                          "point it at a few hundred images like those the model will see "
                          "(class sub-folders are fine, labels are not needed)")
    return paths


class UnlabelledImages(Dataset):
    """Image files as preprocessed tensors, without labels; an unreadable file yields ``None``."""

    def __init__(self, paths: Sequence[Path], preprocessing: Preprocessing) -> None:
        self.paths = list(paths)
        self.transform = eval_transforms(preprocessing)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | None:
        try:
            return self.transform(load_image(self.paths[index]))
        except ImageReadError as error:
            logger.warning("skipping image %s", error)
            return None


def _stack_readable(items: list[torch.Tensor | None]) -> torch.Tensor:
    readable = [item for item in items if item is not None]
    return torch.stack(readable) if readable else torch.empty(0)


def calibration_images(folder: str | Path, preprocessing: Preprocessing,
                       count: int = DEFAULT_CALIBRATION_IMAGES) -> torch.Tensor:
    """Up to ``count`` images from ``folder`` (flat or in class folders), preprocessed, as (N, C, H, W).

    Unreadable files are skipped with a warning; a folder without any usable image is an error.
    """
    dataset = UnlabelledImages(spread(_images_or_error(folder), count), preprocessing)
    images = _stack_readable([dataset[i] for i in range(len(dataset))])
    if len(images) == 0:
        raise ConfigError(f"none of the images in calibration folder {folder} could be read; see the warnings")
    return images


def unlabelled_loader(folder: str | Path, preprocessing: Preprocessing, batch_size: int = 32,
                      num_workers: int = 0, seed: int = 0) -> DataLoader:
    """Every image under ``folder`` in eval preprocessing, shuffled, as batches (N, C, H, W) without labels."""
    dataset = UnlabelledImages(_images_or_error(folder), preprocessing)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      drop_last=len(dataset) > batch_size,
                      collate_fn=_stack_readable, generator=torch.Generator().manual_seed(seed))


def labelled_loader(folder: str | Path, preprocessing: Preprocessing, class_names: Sequence[str] | None = None,
                    batch_size: int = 50, num_workers: int = 0) -> DataLoader:
    """The class-folder dataset at ``folder`` in eval preprocessing, in file order.

    With ``class_names`` (the model's) the folder's classes must be the same names, and labels
    follow the model's order.
    """
    dataset = scan_folder(folder, classes=list(class_names) if class_names else None,
                          transform=eval_transforms(preprocessing), classes_from=MODEL_CLASSES)
    return build_loader(dataset, batch_size, train=False, num_workers=num_workers)
