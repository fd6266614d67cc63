"""Training refuses what would mix runs, teach nothing or crash part-way, before writing
anything (issue 16, items 1, 2, 7, 8, 9, 17 and 18)."""

from __future__ import annotations

import csv
import logging
import os
import shutil

import pytest
import torch

from _train_helpers import (
    make_image_folder,
    single_thread,  # noqa: F401 (fixture)
    tiny_assignments,
    tiny_config,
)
from effnet.cli import main
from effnet.errors import ConfigError
from effnet.train import Trainer, TrainingDiverged
from effnet.train.recipes import build_config
from effnet.train.rundir import LOCK_NAME, RunDirError, claim_run_dir

pytestmark = pytest.mark.usefixtures("single_thread")
ONE_EPOCH = {"run.epochs": 1}


def _train_argv(data, out, *extra: str, **settings) -> list[str]:
    sets = [arg for assignment in tiny_assignments(**{**ONE_EPOCH, **settings}) for arg in ("--set", assignment)]
    return ["train", "--data", str(data), "--out", str(out), *sets, *extra]


def _listing(folder) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("data"), train_per_class=4, val_per_class=2, size=32)
    shutil.copy(root / "val" / "class_0" / "000.png", os.path.join(os.fsencode(root / "val" / "class_1"),
                                                                   b"odd_\xff.png"))
    return root


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    """A one-epoch run whose validation set holds a file name that is not UTF-8."""
    out = tmp_path_factory.mktemp("runs") / "first"
    assert main(_train_argv(data, out)) == 0
    return out


def test_a_name_that_is_not_utf8_in_the_validation_set_leaves_every_output(finished_run):
    for name in ("mistakes.csv", "per_class.csv", "confusion_matrix.csv", "model.safetensors", "train.log"):
        assert (finished_run / name).is_file(), name
    rows = list(csv.DictReader((finished_run / "mistakes.csv").open(encoding="utf-8")))
    assert all(os.path.exists(row["path"]) or row["path"].endswith("odd_\\xff.png") for row in rows)


def test_a_fresh_run_into_a_folder_with_another_runs_files_is_refused_unless_overwrite(data, finished_run,
                                                                                       tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    before = _listing(out)
    assert main(_train_argv(data, out)) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds another run (last.pt, best.pt, model.safetensors, config.yaml ...)" in err
    assert f"--resume {out}" in err and "--overwrite" in err
    assert _listing(out) == before
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "stale").write_text("from the old run")
    assert main(_train_argv(data, out, "--overwrite")) == 0
    assert not (out / "tensorboard" / "stale").exists()
    assert (out / "metrics.csv").read_text().count("\n") == 2  # the new run's one epoch, not the old history


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_first(data, tmp_path, capsys):
    out = tmp_path / "busy"
    lock = claim_run_dir(out, fresh=True)
    try:
        assert main(_train_argv(data, out)) == 2
        assert f"{out} is in use by another effnet run (process {os.getpid()})" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        lock.release()
    claim_run_dir(out, fresh=True).release()  # free again once released


def test_the_lock_is_taken_for_the_run_and_released_after(data, tmp_path):
    trainer = Trainer(tiny_config(data, **ONE_EPOCH), run_dir=tmp_path / "run")
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


def test_resuming_non_finite_weights_is_refused_before_writing(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    state["model"]["stem.conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, run / "last.pt")
    before = _listing(run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'last.pt'}: checkpoint weight 'stem.conv.weight' holds NaN or infinite values" in err
    assert _listing(run) == before


def test_a_single_class_is_refused_unless_allowed(tmp_path, caplog):
    data = make_image_folder(tmp_path / "one", classes=1, train_per_class=4, val_per_class=2, size=32)
    with pytest.raises(ConfigError, match="holds a single class .*--allow-single-class"):
        Trainer(tiny_config(data), run_dir=tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="effnet.train"):
        Trainer(tiny_config(data, **{"data.allow_single_class": True}), run_dir=tmp_path / "run")
    assert "a single class ('class_0'): accuracy will be 100%" in caplog.text
    assert not (tmp_path / "run").exists()


def test_batch_size_one_with_a_one_pixel_last_map_is_refused_before_training(data, tmp_path):
    with pytest.raises(ConfigError, match="a batch of 1 image.* at 32 px leaves BatchNorm one value per channel"):
        Trainer(tiny_config(data, **{"data.batch_size": 1}), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_recipe_warmup_longer_than_the_run_is_shortened_with_a_notice(caplog):
    with caplog.at_level(logging.WARNING, logger="effnet.train"):
        config = build_config("seed", {"run.epochs": 1})
    assert config.schedule.warmup_epochs == pytest.approx(0.1)
    assert "schedule.warmup_epochs=1 is not shorter than run.epochs=1; warming up for 0.1 epoch(s)" in caplog.text


def test_divergence_before_any_checkpoint_does_not_advise_resuming(data, tmp_path):
    trainer = Trainer(tiny_config(data, **ONE_EPOCH), run_dir=tmp_path / "run")
    trainer.raw_model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet.*then start again") as caught:
        trainer.fit()
    assert "--resume" not in str(caught.value)


@pytest.mark.parametrize(("argv", "message"), [
    (["--set", "optimizer.lr=[1"], "--set 'optimizer.lr=[1' is not valid YAML at line 1, column 3"),
    (["--recipe", "RECIPE"], "is not valid YAML at line 2, column 1"),
    (["--lr", "inf"], "optimizer.lr must be positive and finite, got inf"),
])
def test_bad_yaml_and_non_finite_settings_are_one_line_messages(data, tmp_path, capsys, argv, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("optimizer: {lr: [1\n")
    argv = [str(recipe) if arg == "RECIPE" else arg for arg in argv]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
