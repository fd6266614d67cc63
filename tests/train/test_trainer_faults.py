"""Faults never lose work: NaN losses, SIGINT/SIGTERM, SIGKILL during a save, bad data."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from effnet.train import Trainer, TrainingDiverged
from effnet.train.config import ScheduleSettings
from effnet.train.ema import ModelEMA
from effnet.train.schedule import LRSchedule
from effnet.train.snapshot import TrainingSnapshot
from helpers.train import (
    ONE_EPOCH,
    assert_same_tensors,
    load,
    make_image_folder,
    tiny_assignments,
    tiny_config,
    without_timing,
)

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL_BATCH = {"data.batch_size": 4}  # 6 updates per epoch: room to signal mid-epoch


def _poison_outputs_from_epoch(trainer: Trainer, epoch: int) -> None:
    def hook(module, inputs, output):
        return output * float("nan") if len(trainer.state.history) >= epoch - 1 and module.training else output

    trainer.raw_model.register_forward_hook(hook)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(image_folder, tmp_path) -> None:
    trainer = Trainer(tiny_config(image_folder), run_dir=tmp_path / "run")
    _poison_outputs_from_epoch(trainer, 2)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, batch 1 .*last good checkpoint "
                                               r".*last.pt is kept.*--resume"):
        trainer.fit()
    last = load(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1 and len(last["history"]) == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert load(tmp_path / "run" / "best.pt")["epoch"] == 1
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 2  # header and epoch 1


def _training_state(trainer: Trainer) -> dict:
    """Parameters, EMA and optimizer state (the BatchNorm statistics of a run that checks every
    update hold the forward of the batch found bad; a restored state's do not)."""
    return {**{f"model.{k}": v for k, v in trainer.raw_model.named_parameters()},
            **{f"ema.{k}": v for k, v in trainer.ema.module.state_dict().items()},
            **{f"optimizer.{i}.{k}": v for i, state in trainer.optimizer.state_dict()["state"].items()
               for k, v in state.items()}}


def _diverge_from_batch(image_folder, tmp_path, check_every: int, batch: int) -> tuple[Trainer, str]:
    """A one-epoch run (6 updates) whose loss is NaN from training batch ``batch`` (1-based) on."""
    trainer = Trainer(tiny_config(image_folder, **SMALL_BATCH, **{"run.epochs": 1, "run.check_every": check_every}),
                      run_dir=tmp_path / f"every{check_every}")
    forwards = [0]

    def hook(module, inputs, output):
        if module.training:
            forwards[0] += 1
            return output * float("nan") if forwards[0] >= batch else output
        return output

    trainer.raw_model.register_forward_hook(hook)
    with pytest.raises(TrainingDiverged) as error:
        trainer.fit()
    return trainer, str(error.value)


def test_nan_found_at_a_later_check_restores_the_state_of_the_last_check(image_folder, tmp_path) -> None:
    # check_every=4: the device is read before updates 4 and 6; the NaN of batch 5 is applied in
    # update 5 and found at the read before update 6, which puts back the state after update 4:
    # the state a run reading every update keeps when it stops before the bad update 5.
    late, message = _diverge_from_batch(image_folder, tmp_path, 4, 5)
    assert "loss became nan at epoch 1, batch 5 " in message
    assert "state it had before batch 5, at the last check" in message and "run.check_every=4" in message
    assert "up to 3 good updates are lost" in message
    at_once, message = _diverge_from_batch(image_folder, tmp_path, 1, 5)
    assert "loss became nan at epoch 1, batch 5 " in message and "check_every" not in message
    assert late.schedule.step_count == at_once.schedule.step_count == 4
    assert late.ema.updates == at_once.ema.updates == 4
    expected = _training_state(at_once)
    assert all(torch.isfinite(t).all() for t in expected.values() if t.is_floating_point())
    assert_same_tensors(_training_state(late), expected)


def test_nan_found_late_names_the_learning_rate_of_its_own_update(image_folder, tmp_path) -> None:
    # batch 6 is the second since the read before update 4: the state goes back to update 4's,
    # and the message names the rate of update 6, as a run reading every update does
    late, message = _diverge_from_batch(image_folder, tmp_path, 4, 6)
    at_once, at_once_message = _diverge_from_batch(image_folder, tmp_path, 1, 6)
    assert late.schedule.step_count == 4 and at_once.schedule.step_count == 5
    lr = at_once.schedule.lr_at(5 / 6)
    assert lr != late.schedule.lr and f"batch 6 (lr {lr:.4g})" in message and f"(lr {lr:.4g})" in at_once_message


def test_nan_loss_before_any_checkpoint_writes_none(image_folder, tmp_path) -> None:
    trainer = Trainer(tiny_config(image_folder), run_dir=tmp_path / "run")
    _poison_outputs_from_epoch(trainer, 1)
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        trainer.fit()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_non_finite_weights_are_never_saved(image_folder, tmp_path) -> None:
    """A BatchNorm statistic can blow up while the training loss stays finite."""
    trainer = Trainer(tiny_config(image_folder), run_dir=tmp_path / "run")
    trainer.fit(stop_after=1)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    update = trainer._update

    def poisoned_update():
        update()
        trainer.raw_model.head.bn.running_var.fill_(float("inf"))

    trainer._update = poisoned_update
    with pytest.raises(TrainingDiverged, match="head.bn.running_var became non-finite in epoch 2"):
        trainer.fit()
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from effnet.cli import main
    from effnet import files
    from effnet.train import trainer

    mode, marker, args = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    if mode == "signal":  # slow updates, and say when two are done
        update = trainer.Trainer._update
        count = [0]
        def slow_update(self):
            update(self)
            count[0] += 1
            if count[0] == 2:
                marker.write_text("ready")
            time.sleep(0.3)
        trainer.Trainer._update = slow_update
    else:  # hang in the second (kill-first: the first) save of last.pt, between the temp file and the rename
        publish = files.publish
        saves = [0]
        def hanging_publish(temp, path):
            if path.name == "last.pt":
                saves[0] += 1
                if saves[0] == (1 if mode == "kill-first" else 2):
                    marker.write_text(temp.name)
                    time.sleep(600)
            publish(temp, path)
        files.publish = hanging_publish
    sys.exit(main(args))
""")


def _start_child(tmp_path: Path, mode: str, args: list[str]) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, str(script), mode, str(marker), json.dumps(args)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # its own process group, as a terminal job
    return process, marker


def _wait_for(marker: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"child exited early:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("child never reached the point to interrupt")
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "check_every"), [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGTERM, 2)],
                         ids=["SIGINT", "SIGTERM", "SIGTERM-check-every-2"])
@pytest.mark.slow
def test_a_signal_saves_a_resumable_checkpoint_mid_epoch(image_folder, straight_run, tmp_path, signum,
                                                         check_every) -> None:
    """With check_every=2 the device is read before updates 2, 4 and 6: a signal after update 2
    is seen at the read before update 4, and the run stops after it. The resumed run ends with
    the weights of the uninterrupted one (which read the device every update)."""
    run_dir = tmp_path / "run"
    settings = {**SMALL_BATCH, "run.check_every": check_every}
    args = ["train", "--data", str(image_folder), "--out", str(run_dir), "--no-progress"]
    args += [a for item in tiny_assignments(**settings) for a in ("--set", item)]
    process, marker = _start_child(tmp_path, "signal", args)
    _wait_for(marker, process)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert f"{signum.name} received" in output and "--resume" in output
    state = load(run_dir / "last.pt")
    assert state["epoch"] == 0 and 2 <= state["step_in_epoch"] < 6
    if check_every == 2:
        assert state["step_in_epoch"] == 4 and state["schedule"]["step_count"] == 4

    resumed = Trainer(tiny_config(image_folder, **settings), resume=run_dir).fit()
    assert resumed.status == "completed"
    a, b = load(straight_run.run_dir / "last.pt"), load(run_dir / "last.pt")
    assert_same_tensors(a["model"], b["model"])
    assert_same_tensors(a["ema"]["module"], b["ema"]["module"])
    assert without_timing(a["history"]) == without_timing(b["history"])


@pytest.mark.slow
def test_ctrl_c_with_loader_workers_saves_and_exits(image_folder, tmp_path) -> None:
    """Ctrl-C signals the whole process group, DataLoader workers included."""
    run_dir = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--out", str(run_dir), "--no-progress", "--workers", "2"]
    args += [a for item in tiny_assignments(**SMALL_BATCH, **{"data.num_workers": 2}) for a in ("--set", item)]
    process, marker = _start_child(tmp_path, "signal", args)
    _wait_for(marker, process)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "exited unexpectedly" not in output
    assert output.count("SIGINT received") == 1  # the main process alone reacts; workers ignore it
    assert load(run_dir / "last.pt")["step_in_epoch"] > 0
    assert Trainer(tiny_config(image_folder, **SMALL_BATCH), resume=run_dir).fit().status == "completed"


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_the_previous_checkpoint(image_folder, straight_run, tmp_path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--out", str(run_dir), "--no-progress"]
    args += [a for item in tiny_assignments(**SMALL_BATCH) for a in ("--set", item)]
    process, marker = _start_child(tmp_path, "kill", args)
    _wait_for(marker, process)
    temp = run_dir / marker.read_text()
    assert temp.stat().st_size > 0  # the new checkpoint is fully written but not yet renamed
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    assert load(run_dir / "last.pt")["epoch"] == 1  # the previous checkpoint, intact
    resumed = Trainer(tiny_config(image_folder, **SMALL_BATCH), resume=run_dir).fit()
    assert resumed.status == "completed" and not temp.exists()
    assert_same_tensors(load(straight_run.run_dir / "last.pt")["model"], load(run_dir / "last.pt")["model"])


@pytest.mark.slow
def test_sigkill_before_the_first_last_pt_resumes_from_best_pt(image_folder, straight_run, tmp_path, capsys) -> None:
    """An epoch end writes model.safetensors and best.pt before last.pt: killed in between, the
    run folder holds best.pt alone, which a fresh run points at and --resume continues from."""
    run_dir = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--out", str(run_dir), "--no-progress"]
    args += [a for item in tiny_assignments(**SMALL_BATCH) for a in ("--set", item)]
    process, marker = _start_child(tmp_path, "kill-first", args)
    _wait_for(marker, process)
    temp = run_dir / marker.read_text()
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (run_dir / "last.pt").exists() and load(run_dir / "best.pt")["epoch"] == 1 and temp.exists()

    from effnet.cli import main
    assert main(args) == 2
    assert f"continue it with --resume {run_dir}" in capsys.readouterr().err
    resumed = Trainer(tiny_config(image_folder, **SMALL_BATCH), resume=run_dir).fit()
    assert resumed.status == "completed" and len(resumed.history) == 2 and not temp.exists()
    assert_same_tensors(load(straight_run.run_dir / "last.pt")["model"], load(run_dir / "last.pt")["model"])
    assert not [p.name for p in run_dir.iterdir() if ".tmp-" in p.name]


def test_missing_data_fails_before_anything_is_written(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        Trainer(tiny_config(tmp_path / "nowhere"), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_empty_class_folder_fails_before_training(image_folder, tmp_path) -> None:
    broken = tmp_path / "broken"
    for split in ("train", "val"):
        for folder in (image_folder / split).iterdir():
            (broken / split / folder.name).mkdir(parents=True)
            for image in folder.iterdir():
                (broken / split / folder.name / image.name).write_bytes(image.read_bytes())
    (broken / "train" / "class_3").mkdir()
    (broken / "val" / "class_3").mkdir()
    with pytest.raises(ValueError, match="class_3"):
        Trainer(tiny_config(broken), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unreadable_files_are_skipped_or_refused_with_strict(image_folder, tmp_path, caplog) -> None:
    messy = tmp_path / "messy"
    for split in ("train", "val"):
        for folder in (image_folder / split).iterdir():
            (messy / split / folder.name).mkdir(parents=True)
            for image in folder.iterdir():
                (messy / split / folder.name / image.name).write_bytes(image.read_bytes())
    (messy / "train" / "class_0" / "zero.png").write_bytes(b"")
    (messy / "train" / "class_1" / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="zero.png"):
        Trainer(tiny_config(messy, **{"data.strict": True}), run_dir=tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(tiny_config(messy), run_dir=tmp_path / "lenient")
    assert len(trainer.train_set) == 24
    assert "train: skipped 2 unusable file(s)" in caplog.text


def test_snapshot_puts_back_an_fp16_scaler_state_copied_without_reading_the_device(monkeypatch) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    schedule = LRSchedule(optimizer, ScheduleSettings(), 0.1, epochs=2, steps_per_epoch=4)
    ema = ModelEMA(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=3)
    snapshot = TrainingSnapshot(model, optimizer, schedule, ema, scaler)

    def update(poison: bool = False) -> None:
        loss = model(torch.randn(5, 3)).square().mean() * (float("inf") if poison else 1.0)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        ema.update(model)

    def state() -> dict:
        return {**{f"model.{k}": v.clone() for k, v in model.state_dict().items()},
                **{f"ema.{k}": v.clone() for k, v in ema.module.state_dict().items()},
                **{f"optimizer.{i}.{k}": v.clone() for i, s in optimizer.state_dict()["state"].items()
                   for k, v in s.items()},
                "scale": scaler.get_scale(), "tracker": scaler._get_growth_tracker(),
                "schedule": schedule.step_count, "ema_updates": ema.updates}

    snapshot.take()  # before the scaler's first scale(): its initial values
    initial = state()
    for _ in range(2):
        update()
    snapshot.restore()
    assert_same_state(state(), initial)  # the optimizer state is gone again
    assert (scaler.get_scale(), schedule.step_count, ema.updates, optimizer.state) == (8.0, 0, 0, {})

    update()
    snapshot.take()  # the optimizer and scaler states appeared: new copies
    update()  # two good steps counted towards the growth (every 3)
    copy_ = torch._foreach_copy_
    dtypes = []
    with monkeypatch.context() as patch:  # the copy reads nothing on the host
        patch.setattr(torch.Tensor, "item", lambda self: pytest.fail("take() read a tensor"))
        patch.setattr(torch, "_foreach_copy_", lambda into, out_of: dtypes.append({t.dtype for t in into})
                      or copy_(into, out_of))
        snapshot.take()
    # one multi-tensor copy per dtype (a mixed list is copied tensor by tensor): the floats, the
    # BatchNorm counter, the scaler's growth tracker
    assert sorted(map(sorted, dtypes), key=str) == [[torch.float32], [torch.int32], [torch.int64]]
    kept = state()
    assert (kept["scale"], kept["tracker"]) == (8.0, 2)
    update(poison=True)  # an inf gradient: the step is skipped, the scale halves, the count restarts
    update()
    assert (scaler.get_scale(), scaler._get_growth_tracker(), schedule.step_count) == (4.0, 1, 4)
    snapshot.restore()
    assert_same_state(state(), kept)


def assert_same_state(got: dict, expected: dict) -> None:
    assert_same_tensors({k: v for k, v in got.items() if isinstance(v, torch.Tensor)},
                        {k: v for k, v in expected.items() if isinstance(v, torch.Tensor)})
    assert {k: v for k, v in got.items() if not isinstance(v, torch.Tensor)} == \
        {k: v for k, v in expected.items() if not isinstance(v, torch.Tensor)}


def test_divergence_before_any_checkpoint_does_not_advise_resuming(odd_name_data, tmp_path):
    trainer = Trainer(tiny_config(odd_name_data, **ONE_EPOCH), run_dir=tmp_path / "run")
    trainer.raw_model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet.*then start again") as caught:
        trainer.fit()
    assert "--resume" not in str(caught.value)


def test_resuming_mid_epoch_after_the_data_shrank_goes_on_at_the_same_fraction(tmp_path, caplog) -> None:
    data = make_image_folder(tmp_path / "data", train_per_class=8, val_per_class=2, size=24)
    config = tiny_config(data, **SMALL_BATCH)  # 24 images: 6 batches per epoch
    assert Trainer(config, run_dir=tmp_path / "run").fit(stop_after=1).status == "stopped"
    state = load(tmp_path / "run" / "last.pt")
    assert state["train_images"] == 24
    state.update(step_in_epoch=5, epoch_rng=None)  # as if stopped at batch 6 of epoch 2
    torch.save(state, tmp_path / "run" / "last.pt")
    for label in range(3):
        for index in range(2, 8):
            (data / "train" / f"class_{label}" / f"{index:03d}.png").unlink()  # 6 images left: 1 batch
    with caplog.at_level(logging.WARNING, logger="effnet.train"):
        result = Trainer(tiny_config(data, **SMALL_BATCH), resume=tmp_path / "run").fit()
    assert result.status == "completed" and [row["epoch"] for row in result.history] == [1, 2]
    assert any("training data changed since the checkpoint (24 -> 6 images): epoch 2 goes on at batch 1 of 1"
               in r.getMessage() for r in caplog.records)
