"""Checkpoint files: atomic replacement, safe loading, RNG states, errors that say what to do."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch

from effnet.cli import main
from effnet.train import checkpoint as ckpt
from helpers.files import listing


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path) -> None:
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"model": {"w": torch.ones(3)}, "model_config": {}, "epoch": 1}, path)
    ckpt.save_checkpoint({"model": {"w": torch.zeros(3)}, "model_config": {}, "epoch": 2}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckpt.save_checkpoint({"model": {}, "model_config": {}, "rng": ckpt.rng_state()}, tmp_path / "s.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])


def test_resume_needs_a_last_checkpoint(tmp_path) -> None:
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    with pytest.raises(FileNotFoundError, match="has no last.pt .nor best.pt. to resume from"):
        ckpt.resolve_resume(empty_run)


@pytest.mark.slow
def test_resuming_non_finite_weights_is_refused_before_writing(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    state["model"]["stem.conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, run / "last.pt")
    before = listing(run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'last.pt'}: checkpoint weight 'stem.conv.weight' holds NaN or infinite values" in err
    assert listing(run) == before
