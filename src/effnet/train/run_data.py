"""A run's data: its image sets, checked before any training work, and their loaders.

:func:`load_datasets` reads the training and validation sets (bad paths, empty folders and a
class list that differs from a resumed run's fail before a model is built). :class:`RunLoaders`
holds the validation loader (a shard per process) and the training loader of the epoch's image
size and RandAugment magnitude, rebuilt when they change. With ``data.decode`` on the device
the loaders yield encoded images that are decoded and transformed there. Loader workers leave
stop signals to the main process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Subset

from ..data.datasets import DatasetSplits, ImageDataset, build_datasets
from ..data.device_decode import (
    DeviceBatchTransform,
    DeviceDecodeLoader,
    EncodedImages,
    collate_encoded,
    decodes_on_device,
)
from ..data.loaders import build_loader
from ..data.transforms import eval_transforms, train_transforms
from ..description import Preprocessing
from ..errors import ConfigError
from .checks import check_class_count
from .config import TrainConfig
from .distributed import DistContext
from .progressive import EpochSettings
from .reporting import LOG
from .signals import signals_to_main_process


def load_datasets(config: TrainConfig, resumed_classes: list[str] | None = None) -> DatasetSplits:
    """The training and validation sets of ``data.path``, refused when either is empty, when
    there is a single class (unless allowed), or when the classes differ from ``resumed_classes``."""
    data = config.data
    splits = build_datasets(data.path, val_split=data.val_split, seed=config.run.seed, strict=data.strict,
                            follow_links=data.follow_links)
    class_names = list(splits.classes)
    check_class_count(class_names, data.allow_single_class, data.path)
    if len(splits.train) == 0:
        raise ConfigError(f"no usable training images in {data.path}")
    if len(splits.val) == 0:
        raise ConfigError(f"no validation images for {data.path}: add a val/ folder or set data.val_split")
    for name, dataset in (("train", splits.train), ("val", splits.val)):
        if dataset.skipped:
            LOG.warning("%s: skipped %d unusable file(s) (see the warnings above)", name, len(dataset.skipped))
    if resumed_classes is not None and resumed_classes != class_names:
        raise ConfigError(f"the data's classes {class_names} differ from the resumed run's "
                          f"{resumed_classes}; resume with the same data")
    return splits


def loader_generators(loader: DataLoader | DeviceDecodeLoader) -> list[torch.Generator]:
    """The random generators of ``loader`` and its samplers (its data order), each once."""
    found: dict[int, torch.Generator] = {}
    for owner in (loader, loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            found[id(generator)] = generator
    return list(found.values())


class RunLoaders:
    """The validation loader (:attr:`val`) and the training loader of the current epoch
    (:attr:`train`, from :meth:`for_epoch`). Setting them up gives ``val_set`` the evaluation
    transforms of ``preprocessing``; :meth:`for_epoch` gives ``train_set`` the training ones."""

    def __init__(self, config: TrainConfig, context: DistContext, train_set: ImageDataset, val_set: ImageDataset,
                 preprocessing: Preprocessing, memory_format: torch.memory_format) -> None:
        self.config, self.context = config, context
        self.train_set, self.val_set = train_set, val_set
        self.preprocessing, self.memory_format = preprocessing, memory_format
        self.decode_on_device = decodes_on_device(config.data.decode, context.device)
        self.val_set.transform = eval_transforms(preprocessing)
        self.val = self._build_val_loader()
        """The validation loader (this process's shard under DDP)."""
        self.train: DataLoader | DeviceDecodeLoader | None = None
        """The training loader of the current epoch (None before the first :meth:`for_epoch`)."""
        self._train_key: tuple | None = None

    def _build_val_loader(self) -> DataLoader | DeviceDecodeLoader:
        data, context = self.config.data, self.context
        encoded = self.decode_on_device
        dataset = EncodedImages(self.val_set) if encoded else self.val_set
        if context.distributed:  # a shard per rank, no padding: every image counts once
            dataset = Subset(dataset, range(context.rank, len(self.val_set), context.world_size))
        loader = signals_to_main_process(build_loader(
            dataset, data.eval_batch_size or 2 * data.batch_size, train=False, num_workers=data.num_workers,
            distributed=False, seed=self.config.run.seed, collate_fn=collate_encoded if encoded else None))
        return self._on_device(loader, self.val_set.transform)

    def _on_device(self, loader: DataLoader, transform: Callable) -> DataLoader | DeviceDecodeLoader:
        """With ``data.decode`` on the device, ``loader`` yields encoded images: decode and
        transform its batches there."""
        if not self.decode_on_device:
            return loader
        return DeviceDecodeLoader(loader, DeviceBatchTransform(transform, self.context.device, self.memory_format))

    def for_epoch(self, settings: EpochSettings) -> DataLoader | DeviceDecodeLoader:
        """The training loader for an epoch's size and magnitude (rebuilt when they change)."""
        key = (settings.resolution, settings.ra_magnitude)
        if self.train is None or key != self._train_key:
            a = self.config.augment
            self.train_set.transform = train_transforms(
                self.preprocessing, resolution=settings.resolution, scale=a.scale, hflip=a.hflip,
                color_jitter=a.color_jitter, auto_augment=a.auto_augment, ra_magnitude=settings.ra_magnitude,
                ra_num_ops=a.ra_num_ops, re_prob=a.re_prob, degrees=a.degrees, shear=a.shear, fill=a.fill,
                for_tensors=self.decode_on_device)
            encoded = self.decode_on_device
            loader = signals_to_main_process(build_loader(
                EncodedImages(self.train_set) if encoded else self.train_set, self.config.data.batch_size, train=True,
                num_workers=self.config.data.num_workers, distributed=self.context.distributed,
                seed=self.config.run.seed, collate_fn=collate_encoded if encoded else None))
            self.train = self._on_device(loader, self.train_set.transform)
            self._train_key = key
        return self.train

    def generator_states(self) -> list[torch.Tensor]:
        """The states of the training loader's generators (none before it is built)."""
        return [g.get_state() for g in loader_generators(self.train)] if self.train is not None else []

    def set_generator_states(self, states: list[torch.Tensor]) -> None:
        """Put back what :meth:`generator_states` returned (the data order it continues)."""
        if self.train is not None:
            for generator, saved in zip(loader_generators(self.train), states, strict=False):
                generator.set_state(saved)
