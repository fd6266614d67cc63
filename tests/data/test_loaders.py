import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from effnet.data.loaders import EpochShuffleSampler, build_loader


class Numbers(Dataset):
    """Item i: (i, a draw from python's, numpy's and torch's random generators)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[int, float, float, float]:
        return index, random.random(), float(np.random.rand()), torch.rand(()).item()


def epoch_order(loader) -> list[int]:
    return [i for batch in loader for i in batch[0].tolist()]


def test_train_order_is_a_function_of_seed_and_epoch():
    loader = build_loader(Numbers(50), batch_size=8, train=True, num_workers=0, seed=5)
    first, second = epoch_order(loader), epoch_order(loader)
    assert len(first) == 48 and len(set(first)) == 48 and first != sorted(first)
    assert first != second  # reshuffled every pass
    resumed = build_loader(Numbers(50), batch_size=8, train=True, num_workers=0, seed=5)
    resumed.sampler.set_epoch(1)
    assert epoch_order(resumed) == second
    other_seed = build_loader(Numbers(50), batch_size=8, train=True, num_workers=0, seed=6)
    assert epoch_order(other_seed) != first


def test_eval_is_in_order_and_keeps_every_sample():
    loader = build_loader(Numbers(50), batch_size=8, train=False, num_workers=0)
    assert epoch_order(loader) == list(range(50))
    assert not loader.drop_last and loader.sampler.__class__.__name__ == "SequentialSampler"


def test_defaults_for_drop_last_pin_memory_and_workers():
    small = build_loader(Numbers(5), batch_size=8, train=True, num_workers=0)
    assert not small.drop_last and len(epoch_order(small)) == 5
    assert build_loader(Numbers(50), 8, train=True, num_workers=0).pin_memory == torch.cuda.is_available()
    loader = build_loader(Numbers(50), 8, train=True, num_workers=1)
    assert loader.persistent_workers and loader.num_workers == 1
    assert not build_loader(Numbers(50), 8, train=True, num_workers=0).persistent_workers
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(Numbers(5), 0, train=True)


def test_workers_are_seeded_distinctly_and_reproducibly():
    def draws() -> list[tuple[float, ...]]:
        loader = build_loader(Numbers(8), batch_size=1, train=False, num_workers=2, seed=3, persistent_workers=False)
        return [tuple(round(value.item(), 12) for value in batch[1:]) for batch in loader]

    first = draws()
    assert first == draws()
    assert len({row[0] for row in first}) == 8 and len({row[1] for row in first}) == 8
    worker_zero, worker_one = first[0], first[1]  # consecutive items come from different workers
    assert worker_zero[1] != worker_one[1] and worker_zero[2] != worker_one[2]


def test_sampler_length_and_epoch_pinning():
    sampler = EpochShuffleSampler(range(10), seed=1)
    sampler.set_epoch(3)
    pinned = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == pinned and len(sampler) == 10 and sorted(pinned) == list(range(10))


def test_distributed_uses_a_distributed_sampler(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = build_loader(Numbers(20), batch_size=4, train=True, num_workers=0, distributed=True, seed=2)
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.seed == 2
        loader.sampler.set_epoch(0)
        first = epoch_order(loader)
        loader.sampler.set_epoch(1)
        assert sorted(first) == list(range(20)) and epoch_order(loader) != first
        evaluation = build_loader(Numbers(20), batch_size=4, train=False, num_workers=0, distributed=True)
        assert epoch_order(evaluation) == list(range(20))
    finally:
        dist.destroy_process_group()
