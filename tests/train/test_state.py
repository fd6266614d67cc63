"""The run state round-trips through a checkpoint dict; an epoch's batches replay and group."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from effnet.train.state import EpochSums, RunState, epoch_batches


def _loader(count: int, batch_size: int = 2, seed: int = 0) -> DataLoader:
    data = TensorDataset(torch.arange(count).float().reshape(count, 1), torch.arange(count))
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_run_state_round_trips_for_each_process() -> None:
    state = RunState(epoch=3, step_in_epoch=5, sums=EpochSums(1.5, 40, 2.0), history=[{"epoch": 3}],
                     best={"top1": 90.0, "epoch": 2, "weights": "ema"}, epoch_rng=[{"r": 0}, {"r": 1}])
    saved = state.to_dict(rng=[{"now": 0}, {"now": 1}])
    restored = RunState.from_dict(saved, rank=1, world_size=2)
    assert restored == RunState(3, 5, EpochSums(1.5, 40, 2.0), [{"epoch": 3}],
                                {"top1": 90.0, "epoch": 2, "weights": "ema"}, [{"r": 0}, {"r": 1}], {"now": 1})
    # another number of processes cannot replay the saved data order
    other_world = RunState.from_dict(saved, rank=0, world_size=4)
    assert other_world.epoch_rng is None and other_world.resume_rng is None and other_world.step_in_epoch == 5


def test_a_finished_epoch_saves_no_replay_state() -> None:
    state = RunState(epoch=2, step_in_epoch=0, epoch_rng=[{"r": 0}])
    assert state.to_dict(rng=[{}])["epoch_rng"] is None
    assert RunState().improves(0.0) and not RunState(best={"top1": 50.0}).improves(50.0)


def test_epoch_batches_group_updates_and_replay_the_rest_of_an_epoch() -> None:
    batches = list(epoch_batches(_loader(10), accum_steps=2))  # 5 batches: updates of 2, 2, 1
    assert [(b.step, b.group_size, b.ends_update) for b in batches] == [
        (0, 2, False), (1, 2, True), (2, 2, False), (3, 2, True), (4, 1, True)]
    assert [b.ends_epoch for b in batches] == [False] * 4 + [True]

    replayed_at = []
    rest = list(epoch_batches(_loader(10), accum_steps=2, start=3, on_replayed=lambda: replayed_at.append(True)))
    assert replayed_at == [True] and [b.step for b in rest] == [3, 4]
    for original, again in zip(batches[3:], rest, strict=True):  # the same data order as uninterrupted
        assert torch.equal(original.targets, again.targets)
