"""DDP: the same ``effnet train`` under torchrun, two CPU processes over gloo."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from effnet.evaluation import evaluate_checkpoint
from helpers.train import assert_mistakes_file_matches, load, make_image_folder, tiny_assignments


@pytest.mark.slow
def test_two_processes_over_gloo(tmp_path) -> None:
    data = make_image_folder(tmp_path / "data", train_per_class=8, val_per_class=5)  # 15 val: uneven shards
    run_dir = tmp_path / "run"
    # recomputing activations in backward (checkpointed regions under DDP) and reading the device
    # every 2 updates (the flags agreed across the processes, the snapshot kept by each)
    sets = [arg for item in tiny_assignments(**{"data.batch_size": 4, "schedule.warmup_epochs": 0,
                                                "run.activation_memory": "recompute", "run.check_every": 2})
            for arg in ("--set", item)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "effnet", "train", "--data", str(data), "--out", str(run_dir), "--epochs", "2",
               "--device", "cpu", "--no-progress", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("status") == 1  # only rank 0 prints the result table

    state = load(run_dir / "last.pt")
    assert state["world_size"] == 2 and state["epoch"] == 2 and len(state["rng"]) == 2
    # 24 images, 2 processes x batch 4: 3 updates per epoch, each over 8 images
    assert state["schedule"]["step_count"] == 6
    log = (run_dir / "train.log").read_text()
    assert log.count(" run ") == 1 and "x 2 process(es)" in log

    # The sharded evaluation saw each of the 15 images exactly once.
    result, _, _ = evaluate_checkpoint(run_dir / "best.pt", data, num_workers=0)
    best = load(run_dir / "best.pt")
    row = best["history"][best["best"]["epoch"] - 1]
    assert result.count == 15
    key = "ema_val_top1" if best["eval_weights"] == "ema" else "val_top1"
    assert result.top1 == pytest.approx(row[key])
    # The shards' predictions were put back in dataset order: each mistake sits under its true class.
    rows = assert_mistakes_file_matches(run_dir, result.confusion)
    assert sorted(row["path"] for row in rows) == sorted(str(m.path) for m in result.mistakes)
