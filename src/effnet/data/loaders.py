"""DataLoaders with reproducible shuffling, seeded workers, pinned memory and persistent workers.

Shuffling is a pure function of ``(seed, epoch)``: call ``loader.sampler.set_epoch(epoch)``
before each epoch (both samplers here have it) and a resumed run sees the same order as an
uninterrupted one. Workers get distinct seeds for ``random``, ``numpy`` and ``torch``.

Persistent workers keep the copy of the dataset they were started with: after changing
``dataset.transform`` (progressive resizing) build a new loader with :func:`build_loader`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from ..errors import ConfigError


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(len(dataset))`` drawn from ``seed + epoch``.

    The epoch advances by itself after each full pass; ``set_epoch`` pins it (for resuming).
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.size = len(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        self.epoch += 1
        return iter(order)

    def __len__(self) -> int:
        return self.size


def seed_worker(worker_id: int) -> None:
    """Seed ``random`` and ``numpy`` in a DataLoader worker from the seed torch gave it."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int = 2, distributed: bool = False,
                 seed: int = 0, drop_last: bool | None = None, pin_memory: bool | None = None,
                 persistent_workers: bool | None = None, collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader for training (shuffled, last partial batch dropped) or evaluation (in order).

    ``distributed`` uses a :class:`~torch.utils.data.DistributedSampler` (the process group must be
    initialised); for evaluation it pads the last batch with repeated samples so every rank
    gets the same count. Defaults: ``pin_memory`` when CUDA is available, ``persistent_workers``
    when ``num_workers > 0``, ``drop_last`` for training unless the dataset is smaller than one
    batch.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if drop_last is None:
        drop_last = train and len(dataset) > batch_size
    rank = 0
    if distributed:
        sampler: Sampler[int] = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=drop_last and train)
        rank = sampler.rank
    elif train:
        sampler = EpochShuffleSampler(dataset, seed)
    else:
        sampler = None
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=persistent_workers and num_workers > 0,
                      worker_init_fn=seed_worker if num_workers > 0 else None, collate_fn=collate_fn,
                      generator=torch.Generator().manual_seed(seed * 1000 + rank))
