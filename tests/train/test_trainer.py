"""The training loop end to end on a tiny model: resume bit for bit, the files a run leaves,
accumulation, mixup with staged progressive learning, and evaluation of the saved model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from effnet.data.transforms import MixupCutmix
from effnet.evaluation import evaluate_checkpoint
from effnet.layers import MBConv
from effnet.train import Trainer, TrainResult, train
from effnet.train import trainer as trainer_module
from effnet.weights.io import load_model, read_metadata
from effnet.weights.trained import load_trained_model
from helpers.train import (
    STRAIGHT_RUN,
    assert_mistakes_file_matches,
    assert_same_tensors,
    load,
    tiny_config,
    without_timing,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.slow
def test_resume_continues_the_same_run_bit_for_bit(image_folder, straight_run, tmp_path) -> None:
    config = tiny_config(image_folder, **STRAIGHT_RUN)
    first = train(config, run_dir=tmp_path / "split", stop_after=1)
    assert first.status == "stopped" and first.epochs_completed == 1
    assert load(tmp_path / "split" / "last.pt")["epoch"] == 1
    # The resumed model is the checkpoint's architecture, whatever the settings say now.
    changed = Trainer(tiny_config(image_folder, **{"model.overrides": {"width": 0.5}}), resume=tmp_path / "split")
    assert changed.raw_model.config.width == 0.25
    resumed = Trainer(tiny_config(image_folder, **STRAIGHT_RUN), resume=tmp_path / "split").fit()
    assert resumed.status == "completed" and resumed.epochs_completed == 2

    a, b = load(straight_run.run_dir / "last.pt"), load(tmp_path / "split" / "last.pt")
    assert_same_tensors(a["model"], b["model"])
    assert_same_tensors(a["ema"]["module"], b["ema"]["module"])
    assert a["schedule"] == b["schedule"] and a["ema"]["updates"] == b["ema"]["updates"]
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert_same_tensors(state_a, state_b)
    assert without_timing(a["history"]) == without_timing(b["history"])
    assert resumed.final.top1 == straight_run.final.top1
    assert torch.equal(resumed.final.confusion, straight_run.final.confusion)


def test_a_run_leaves_checkpoints_metrics_and_plots(image_folder, straight_run) -> None:
    run_dir = straight_run.run_dir
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "last.pt", "best.pt", "model.safetensors", "metrics.csv", "curves.png",
            "confusion_matrix.png", "confusion_matrix.csv", "per_class.csv", "train.log", "tensorboard"} <= names
    assert not [n for n in names if ".tmp-" in n]

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["path"] == str(image_folder) and saved["model"]["overrides"] == {"width": 0.25, "depth": 0.25}
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_top1", "val_top5", "ema_val_top1", "lr", "img_size", "train_img_per_s"} <= set(rows[0])
    for png in ("curves.png", "confusion_matrix.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mistakes = assert_mistakes_file_matches(run_dir, straight_run.final.confusion)
    assert [row["path"] for row in mistakes] == [str(m.path) for m in straight_run.final.mistakes]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    best = load(run_dir / "best.pt")
    meta = best["model_meta"]
    assert meta["class_names"] == ["class_0", "class_1", "class_2"]
    # one image size across the run's files: the architecture config carries none
    assert meta["preprocessing"]["resolution"] == 32 and meta["preprocessing"]["crop_pct"] == 1.0
    assert "resolution" not in meta["config"] and "resolution" not in best["config"]["model"]
    assert saved["data"]["eval_img_size"] == 32 and read_metadata(run_dir / "model.safetensors")[
        "preprocessing"]["resolution"] == 32
    assert set(best) >= {"model", "optimizer", "schedule", "scaler", "ema", "epoch", "best", "rng", "config"}
    assert best["best"]["epoch"] == straight_run.best_epoch

    model = load_model(run_dir / "model.safetensors")
    assert model.class_names == meta["class_names"] and model.preprocessing.resolution == 32
    from_pt = load_trained_model(run_dir / "best.pt")
    assert_same_tensors(model.state_dict(), from_pt.state_dict())


def test_evaluating_the_saved_model_reproduces_the_final_metrics(image_folder, straight_run) -> None:
    final = straight_run.final
    for path in (straight_run.run_dir / "model.safetensors", straight_run.run_dir / "best.pt", straight_run.run_dir):
        result, classes, _ = evaluate_checkpoint(path, image_folder, num_workers=0)
        assert classes == ["class_0", "class_1", "class_2"]
        assert result.count == 12
        assert result.top1 == pytest.approx(final.top1) and torch.equal(result.confusion, final.confusion)
        assert result.per_class_count == [4, 4, 4]
        assert [(m.path, m.true_class, m.predicted_class) for m in result.mistakes] == [
            (m.path, m.true_class, m.predicted_class) for m in final.mistakes]


def _copy_classes(source, target, names: dict[str, str]) -> None:
    for split in ("train", "val"):
        for old, new in names.items():
            (target / split / new).mkdir(parents=True)
            for image in (source / split / old).iterdir():
                (target / split / new / image.name).write_bytes(image.read_bytes())


def test_evaluation_maps_the_data_classes_onto_the_model_classes(image_folder, straight_run, tmp_path) -> None:
    model_file = straight_run.run_dir / "model.safetensors"
    full, _, _ = evaluate_checkpoint(model_file, image_folder, num_workers=0)
    _copy_classes(image_folder, tmp_path / "two", {"class_1": "class_1", "class_2": "class_2"})
    part, classes, _ = evaluate_checkpoint(model_file, tmp_path / "two", num_workers=0)
    assert classes == ["class_0", "class_1", "class_2"] and part.count == 8
    assert part.per_class_count == [0, 4, 4]
    assert torch.equal(part.confusion[1:], full.confusion[1:])

    _copy_classes(image_folder, tmp_path / "cats", {"class_0": "cat"})
    with pytest.raises(ValueError, match=r"classes the model does not know: \['cat'\]"):
        evaluate_checkpoint(model_file, tmp_path / "cats", num_workers=0)


def _count_reads(monkeypatch) -> list[int]:
    reads = []

    def counting_all_reduce(tensor, context):
        reads.append(tensor.numel())
        return tensor

    monkeypatch.setattr(trainer_module, "all_reduce_sum", counting_all_reduce)
    return reads


@pytest.mark.slow
def test_gradient_accumulation_counts_updates_and_reads_the_device_once_per_update(
        image_folder, tmp_path, monkeypatch) -> None:
    reads = _count_reads(monkeypatch)
    config = tiny_config(image_folder, **{"data.batch_size": 4, "run.accum_steps": 4, "run.epochs": 1,
                                  "schedule.warmup_epochs": 0})
    train(config, run_dir=tmp_path / "accum")
    state = load(tmp_path / "accum" / "last.pt")
    assert state["schedule"]["step_count"] == 2  # 6 batches of 4 -> groups of 4 and 2
    assert state["ema"]["updates"] == 2
    # one agreed read per update (the group's non-finite flags, the stop flag, the loss sum), then
    # the epoch's totals and the end-of-epoch stop check: not one per micro-batch
    assert reads == [4 + 2, 2 + 2, 2, 1]


@pytest.mark.parametrize(("check_every", "expected"), [
    (4, [4 + 2, 2 + 2]),  # ceil(6 / 4) reads: after 4 updates, and at the epoch's end
    (2, [2 + 2] * 3),
    (8, [6 + 2]),  # the epoch's end reads at the latest
])
def test_the_device_is_read_once_every_check_every_updates(image_folder, tmp_path, monkeypatch, check_every,
                                                           expected) -> None:
    reads = _count_reads(monkeypatch)
    config = tiny_config(image_folder, **{"data.batch_size": 4, "run.epochs": 1, "schedule.warmup_epochs": 0,
                                  "run.check_every": check_every})
    train(config, run_dir=tmp_path / "every")
    assert load(tmp_path / "every" / "last.pt")["schedule"]["step_count"] == 6
    assert reads == expected + [2, 1]  # then the epoch's totals and the end-of-epoch stop check


def test_staged_progressive_learning_applies_each_stage_mixup(image_folder, tmp_path, monkeypatch) -> None:
    config = tiny_config(image_folder, **{
        "progressive.mode": "staged", "progressive.start_size": 16, "progressive.size_step": 16,
        "progressive.stages": 2, "progressive.drop_rate": [0.05, 0.25], "progressive.mixup_alpha": [0.1, 0.3],
        "augment.auto_augment": "randaugment", "augment.cutmix_alpha": 1.0, "run.clip_grad": 1.0})
    mixed = []

    class RecordingMixer(MixupCutmix):
        def __call__(self, images, targets):
            images, soft = super().__call__(images, targets)
            mixed.append((images.shape[-1], self.mixup_alpha, soft))
            return images, soft

    monkeypatch.setattr(trainer_module, "MixupCutmix", RecordingMixer)
    trainer = Trainer(config, run_dir=tmp_path / "staged")
    result = trainer.fit()
    assert [row["img_size"] for row in result.history] == [16, 32]
    assert trainer.raw_model.dropout.p == pytest.approx(0.25)
    # every batch was mixed, with each stage's mixup strength, into soft targets
    assert [(size, alpha) for size, alpha, _ in mixed] == [(16, 0.1)] * 3 + [(32, 0.3)] * 3
    assert any(((soft > 0.2).sum(dim=1) == 2).any() for _, _, soft in mixed)  # images of two classes blended
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in result.history)


def test_a_new_run_refuses_a_directory_holding_a_run(image_folder, straight_run) -> None:
    with pytest.raises(ValueError, match="already holds another run .*--resume.*--overwrite"):
        Trainer(tiny_config(image_folder), run_dir=straight_run.run_dir)


@pytest.mark.cpu_kinds
def test_bf16_autocast_on_the_cpu(image_folder, tmp_path) -> None:
    result = train(tiny_config(image_folder, **{"run.amp": "bf16", "run.epochs": 1, "schedule.warmup_epochs": 0,
                                        "ema.enabled": False}), run_dir=tmp_path / "bf16")
    assert result.status == "completed" and result.final.count == 12
    assert load(tmp_path / "bf16" / "last.pt")["ema"] is None


def test_fp16_needs_cuda(image_folder, tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Trainer(tiny_config(image_folder, **{"run.amp": "fp16"}), run_dir=tmp_path / "fp16")


def test_evaluation_dataset_picks_the_images_to_score(image_folder, tmp_path) -> None:
    from effnet.evaluation import evaluation_dataset

    assert len(evaluation_dataset(image_folder)) == 12  # val/ beside train/
    assert len(evaluation_dataset(image_folder / "train")) == 24  # a folder of class folders: all of it
    assert len(evaluation_dataset(image_folder / "train", val_split=0.25)) == 6  # what training held out
    train_only = tmp_path / "train_only"
    _copy_classes(image_folder, train_only, {"class_0": "class_0"})
    (train_only / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="no val/ .*--val-split"):
        evaluation_dataset(train_only)


def test_zero_init_head_starts_from_uniform_predictions(image_folder, tmp_path) -> None:
    trainer = Trainer(tiny_config(image_folder, **{"model.zero_init_head": True}), run_dir=tmp_path / "zero")
    classifier = trainer.raw_model.classifier
    assert not classifier.weight.any() and not classifier.bias.any()
    reference = Trainer(tiny_config(image_folder), run_dir=tmp_path / "reference").raw_model.classifier
    assert reference.weight.abs().max() > 0.1  # uniform +-1/sqrt(3)


def mbconv_inputs_and_outputs(model: torch.nn.Module) -> list[tuple[MBConv, torch.Tensor, torch.Tensor]]:
    """Each MBConv block with its input and output in one eval-mode forward pass."""
    seen: list[tuple[MBConv, torch.Tensor, torch.Tensor]] = []
    hooks = [block.register_forward_hook(lambda block, args, out: seen.append((block, args[0], out)))
             for block in model.modules() if isinstance(block, MBConv)]
    model.eval()(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return seen


def test_zero_init_residual_starts_every_residual_block_as_the_identity(image_folder, tmp_path) -> None:
    overrides = {"model.overrides": {"width": 0.25, "depth": 0.5}}  # depth 0.25 leaves no residual block
    zero, reference = (
        mbconv_inputs_and_outputs(Trainer(tiny_config(image_folder, **overrides, **{"model.zero_init_residual": on}),
                                          run_dir=tmp_path / str(on)).raw_model)
        for on in (True, False))
    residual = [(x, out) for block, x, out in zero if block.has_residual]
    assert 0 < len(residual) < len(zero)
    assert all(torch.equal(x, out) for x, out in residual)
    assert all(out.any() for block, _, out in zero if not block.has_residual)
    assert not any(torch.equal(x, out) for _, x, out in reference)


def test_train_throughput_weighs_epochs_by_their_time():
    history = [{"epoch_time_s": 10.0, "train_img_per_s": 100.0}, {"epoch_time_s": 30.0, "train_img_per_s": 200.0}]
    result = TrainResult(Path("run"), "completed", 2, 2, None, None, None, ["a"], history)
    assert result.train_images_per_s == pytest.approx(7000 / 40)
    assert TrainResult(Path("run"), "interrupted", 0, 2, None, None, None, ["a"]).train_images_per_s is None


@pytest.mark.slow
def test_keep_last_keeps_the_final_ema_weights_whatever_the_validation_says(image_folder, tmp_path) -> None:
    result = train(tiny_config(image_folder, **{"run.keep": "last", "run.epochs": 3}), run_dir=tmp_path / "last")
    assert (result.best_epoch, result.best_weights) == (3, "ema")
    best = load(tmp_path / "last" / "best.pt")
    assert best["epoch"] == 3 and best["eval_weights"] == "ema"
    assert result.best_top1 == result.history[-1]["ema_val_top1"]


@pytest.mark.slow
def test_recompute_memory_mode_trains_as_the_default_and_is_recorded(image_folder, tmp_path) -> None:
    settings = {"run.epochs": 1, "schedule.warmup_epochs": 0}
    train(tiny_config(image_folder, **settings), run_dir=tmp_path / "save")
    trainer = Trainer(tiny_config(image_folder, **settings, **{"run.activation_memory": "recompute"}),
                      run_dir=tmp_path / "recompute")
    assert trainer.raw_model.memory_mode == "recompute"
    trainer.fit()
    saved = yaml.safe_load((tmp_path / "recompute" / "config.yaml").read_text())
    assert saved["run"]["activation_memory"] == "recompute" and saved["run"]["check_every"] is None
    a, b = load(tmp_path / "save" / "last.pt"), load(tmp_path / "recompute" / "last.pt")
    # bit for bit (in eager mode the same kernels run on the same values), BatchNorm statistics
    # included: they moved once per step, not again in the recomputation
    assert_same_tensors(a["model"], b["model"])
    assert_same_tensors(a["ema"]["module"], b["ema"]["module"])
