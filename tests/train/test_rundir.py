"""effnet.train.rundir: a run directory holds one run, used by one process at a time; a resume
is checked before anything is written."""

from __future__ import annotations

import os
import shutil

import pytest

from effnet.cli import main
from effnet.train import Trainer
from effnet.train.rundir import LOCK_NAME, RunDirError, claim_run_dir
from helpers.files import listing
from helpers.train import ONE_EPOCH, tiny_config, train_argv


def test_a_fresh_run_into_a_folder_with_another_runs_files_is_refused_unless_overwrite(odd_name_data, finished_run,
                                                                                       tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    before = listing(out)
    assert main(train_argv(odd_name_data, out)) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds another run (last.pt, best.pt, model.safetensors, config.yaml ...)" in err
    assert f"--resume {out}" in err and "--overwrite" in err
    assert listing(out) == before
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "stale").write_text("from the old run")
    assert main(train_argv(odd_name_data, out, "--overwrite")) == 0
    assert not (out / "tensorboard" / "stale").exists()
    assert (out / "metrics.csv").read_text().count("\n") == 2  # the new run's one epoch, not the old history


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_first(odd_name_data, tmp_path, capsys):
    out = tmp_path / "busy"
    lock = claim_run_dir(out, fresh=True)
    try:
        assert main(train_argv(odd_name_data, out)) == 2
        assert f"{out} is in use by another effnet run (process {os.getpid()})" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        lock.release()
    claim_run_dir(out, fresh=True).release()  # free again once released


def test_the_lock_is_taken_for_the_run_and_released_after(odd_name_data, tmp_path):
    trainer = Trainer(tiny_config(odd_name_data, **ONE_EPOCH), run_dir=tmp_path / "run")
    seen = []

    def probe(*args, **kwargs):
        with pytest.raises(RunDirError, match="in use by another effnet run"):
            claim_run_dir(tmp_path / "run", fresh=False)
        seen.append(True)
        return real(*args, **kwargs)

    real, trainer._end_epoch = trainer._end_epoch, probe
    trainer.fit()
    assert seen == [True]
    claim_run_dir(tmp_path / "run", fresh=False).release()


def test_resume_validates_before_writing(finished_run, tmp_path, capsys):
    elsewhere = tmp_path / "ck"
    elsewhere.mkdir()
    shutil.copy(finished_run / "last.pt", elsewhere / "copied.pt")
    assert main(["train", "--resume", str(elsewhere / "copied.pt"), "--epochs", "2"]) == 2
    assert "records its best epoch in best.pt, which is not in" in capsys.readouterr().err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["copied.pt"]
    assert main(["train", "--resume", str(finished_run / "model.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "holds a model's weights only, not a training checkpoint" in err and "torch file" not in err
