"""The training loop: from an image folder to a trained, evaluated, resumable model.

One :class:`Trainer` runs a whole run in one process or as one rank of a ``torchrun`` DDP
job. Every epoch it trains (progressive size and regularization, mixup/cutmix, AMP,
accumulation, clipping, EMA), evaluates raw and EMA weights, writes ``last.pt`` (and
``best.pt`` and ``model.safetensors`` when the best top-1 improves), the metrics CSV,
TensorBoard scalars and the curves PNG. Faults are handled so that work is never lost:

- the device is read (loss finite? stop signal?) once every ``run.check_every`` updates and
  at each epoch's end, so the host runs ahead of the device in between. A non-finite loss
  stops the run at the read that finds it, before anything is saved, leaving the last good
  checkpoint as it was (:mod:`effnet.train.divergence`);
- SIGINT/SIGTERM are seen at the next read: the run makes the update, saves a resumable
  ``last.pt`` (mid-epoch) and returns with ``status == "interrupted"``; a second signal stops
  at once (:mod:`effnet.train.signals`);
- checkpoints are written atomically, so a kill during a save leaves the previous one.

Fine-tuning (the ``finetune`` settings, :mod:`effnet.train.finetune`): the optimizer gets one
param group per layer group with its ``lr_scale`` (discriminative rates), and each epoch
starts by freezing and unfreezing layer groups as the strategy says for that epoch (frozen
BatchNorm stays in eval mode). ``model.pretrained`` may also name one of our trained models
(a run directory, ``.pt`` or ``.safetensors``), which then gets a head for the new classes
(:mod:`effnet.train.run_model`; the data and its loaders: :mod:`effnet.train.run_data`).

Resuming restores model, optimizer, schedule, scaler, EMA, history and every RNG state; an
interrupted epoch replays its data order and skips the batches already trained, so a
resumed run with ``num_workers=0`` follows the uninterrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data.transforms import MixupCutmix
from ..device import autocast_context
from ..errors import ConfigError
from ..model import EfficientNet
from ..weights.io import save_model
from ..weights.trained import BEST, LAST, MODEL
from . import checkpoint as ckpt
from . import finetune
from .checkpoint import ResumePoint
from .checks import check_batch_for_batchnorm, check_run_settings
from .config import TrainConfig
from .distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from .divergence import check_finite_weights, raise_loss_diverged
from .ema import ModelEMA
from .optim import build_optimizer, scaled_lr
from .progressive import EpochSettings, ProgressivePlan
from .recipes import config_changes
from .reporting import (
    LOG,
    TensorBoardLog,
    TrainResult,
    close_logging,
    log_epoch,
    log_resume,
    log_run_start,
    plot_curves,
    progress_bar,
    setup_logging,
    write_metrics_csv,
)
from .run_data import RunLoaders, load_datasets
from .run_model import model_for_run, place_for_training
from .rundir import check_fresh_run_dir, check_resume_run_dir, claim_run_dir, default_run_dir, prepare_run_dir
from .schedule import LRSchedule
from .signals import StopRequest
from .snapshot import TrainingSnapshot
from .state import Batch, EpochSums, RunState, epoch_batches
from .validation import Validation

DEFAULT_CUDA_CHECK_EVERY = 8
"""Updates between reads of a CUDA device when ``run.check_every`` is unset: each read drains
the queue of kernels the host has launched ahead, and costs the overlap; on the CPU, where
work is not queued, the device is read at every update."""


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against per-class probabilities (mixup/cutmix targets)."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


class Trainer:
    """A training run; build it with a config (``data.path`` set) and call :meth:`fit`.

    ``resume``: a run directory or checkpoint to continue (or a :class:`~effnet.train.checkpoint.ResumePoint` already
    read); ``run_dir`` defaults to the resumed run's directory, else ``runs/<model>-<time>``.
    A new run refuses a folder that holds another run's files unless ``overwrite`` (see
    :mod:`effnet.train.rundir`).
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path | None = None,
                 resume: str | Path | ResumePoint | None = None, overwrite: bool = False) -> None:
        self.config = config
        self.context: DistContext = init_distributed(config.run.device)
        self.resume = ResumePoint.load(resume) if isinstance(resume, (str, Path)) else resume
        if self.resume is not None:
            run_dir = run_dir or self.resume.path.parent
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config.model.name)
        self.overwrite = overwrite
        self._fresh = self.resume is None  # fit() claims the folder for a new run once
        if self.resume is None:
            check_fresh_run_dir(self.run_dir, overwrite)
        else:
            check_resume_run_dir(self.run_dir, self.resume.state, self.resume.path)
        self._check_settings()
        ckpt.seed_generators(config.run.seed)
        # the datasets first: bad data paths and empty folders fail before any training work
        resumed_classes = self.resume.state["model_meta"]["class_names"] if self.resume is not None else None
        splits = load_datasets(config, resumed_classes)
        self.train_set, self.val_set, self.class_names = splits.train, splits.val, list(splits.classes)
        self.raw_model: EfficientNet = model_for_run(config, self.class_names, self.resume)
        ckpt.seed_generators(config.run.seed + self.context.rank)
        self._build_training_state()
        if self.resume is not None:
            self._load_resume_state(self.resume.state)
        self.snapshot = TrainingSnapshot(self.raw_model, self.optimizer, self.schedule, self.ema, self.scaler) \
            if self.check_every > 1 else None  # after a resume, which may give the run a new EMA

    # ----------------------------------------------------------------- set-up
    def _check_settings(self) -> None:
        run, device = self.config.run, self.context.device
        check_run_settings(self.config, device, self.context.distributed)
        if run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not run.deterministic

    def _build_training_state(self) -> None:
        config, context = self.config, self.context
        device = context.device
        self.channels_last = config.run.channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        tuning = config.finetune
        self.unfreeze = finetune.UnfreezeSchedule(tuning.strategy, tuning.epochs_per_group) \
            if tuning.strategy != "full" else None
        self.trainable_groups: list[str] | None = None
        model, self.train_module = place_for_training(self.raw_model, config.run, context, self.memory_format,
                                                      find_unused_parameters=self.unfreeze is not None)
        self.raw_model = model
        self.ema = ModelEMA(model, config.ema.decay, config.ema.warmup) if config.ema.enabled else None

        self.plan = ProgressivePlan(config.progressive, config.augment, config.data.img_size, config.run.epochs,
                                    model.config.drop_rate)
        check_batch_for_batchnorm(config.data.batch_size, len(self.train_set), self.plan.smallest_size(),
                                  model.feature_info[-1].stride)
        self.loaders = RunLoaders(config, context, self.train_set, self.val_set, model.preprocessing,
                                  self.memory_format)
        self.val_loader = self.loaders.val
        self.validation = Validation(self.val_loader, self.val_set, self.class_names, context, config.run.amp,
                                     self.channels_last)
        batches = len(self.loaders.for_epoch(self.plan.at(0)))
        if batches == 0:
            raise ConfigError(f"{len(self.train_set)} training images make no full batch of "
                              f"{config.data.batch_size} per process; lower data.batch_size")
        self.steps_per_epoch = math.ceil(batches / config.run.accum_steps)
        global_batch = config.data.batch_size * context.world_size * config.run.accum_steps
        self.base_lr = scaled_lr(config.optimizer, global_batch)
        groups = finetune.layer_decay_groups(model, self.base_lr, tuning.layer_decay, config.optimizer.weight_decay) \
            if tuning.active else None
        self.optimizer = build_optimizer(model, config.optimizer, self.base_lr, groups)
        self.schedule = LRSchedule(self.optimizer, config.schedule, self.base_lr, config.run.epochs,
                                   self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.run.amp == "fp16")
        self.check_every = config.run.check_every or (DEFAULT_CUDA_CHECK_EVERY if device.type == "cuda" else 1)
        self.state = RunState()

    def _load_resume_state(self, state: dict[str, Any]) -> None:
        self.state = run = RunState.from_dict(state, self.context.rank, self.context.world_size)
        # The loader whose generator states were saved: the epoch in progress, or the one just ended.
        self.loaders.for_epoch(self.plan.at(run.epoch if run.mid_epoch else max(run.epoch - 1, 0)))
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema = ModelEMA(self.raw_model, self.config.ema.decay, self.config.ema.warmup)
        if run.mid_epoch and run.epoch_rng is None:
            LOG.warning("resuming mid-epoch with a different number of processes: the rest of epoch %d "
                        "sees a new data order", run.epoch + 1)
        if run.mid_epoch:
            self._continue_epoch_on_changed_data(state)
        if not run.mid_epoch:
            self._restore_resume_rng()

    def _continue_epoch_on_changed_data(self, state: dict[str, Any]) -> None:
        """Resuming mid-epoch on training data that changed size since the checkpoint: the
        interrupted epoch goes on at the same fraction of its batches, in a new data order
        (the saved order was drawn for the old data)."""
        run = self.state
        batches = len(self.loaders.for_epoch(self.plan.at(run.epoch)))
        saved = state.get("train_images")  # absent from older checkpoints
        if saved == len(self.train_set) or (saved is None and run.step_in_epoch < batches):
            return
        saved_batches = max(state["schedule"]["steps_per_epoch"] * self.config.run.accum_steps, 1)
        step = min(round(run.step_in_epoch * batches / saved_batches), batches - 1)
        LOG.warning("the training data changed since the checkpoint (%s -> %d images): epoch %d goes on at batch "
                    "%d of %d (was %d of %d) in a new data order", saved if saved is not None else "?",
                    len(self.train_set), run.epoch + 1, step + 1, batches, run.step_in_epoch + 1, saved_batches)
        run.step_in_epoch, run.epoch_rng = step, None

    # ------------------------------------------------------------------- RNG
    def _rng_state(self) -> dict[str, Any]:
        state = ckpt.rng_state()
        state["loader"] = self.loaders.generator_states()
        return state

    def _set_rng(self, state: dict[str, Any]) -> None:
        ckpt.set_rng_state(state)
        self.loaders.set_generator_states(state.get("loader", []))

    def _restore_resume_rng(self) -> None:
        """Continue the random streams where the interrupted run left them (once)."""
        if self.state.resume_rng is not None:
            self._set_rng(self.state.resume_rng)
            self.state.resume_rng = None

    # ------------------------------------------------------------------ fit
    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``run.epochs`` (or until epoch ``stop_after``, saving a resumable state)."""
        config, context = self.config, self.context
        started = time.perf_counter()
        handler = None
        tensorboard = None
        lock = None
        if context.is_main:
            lock = claim_run_dir(self.run_dir, self._fresh, self.overwrite)
            self._fresh = False
            prepare_run_dir(self.run_dir, config)
        handler = setup_logging(self.run_dir if context.is_main else None, context.is_main)
        try:
            self._log_start()
            if context.is_main and config.run.tensorboard:
                tensorboard = TensorBoardLog(self.run_dir / "tensorboard", purge_step=self.state.epoch + 1)
            status = "completed"
            with StopRequest() as stop:
                for epoch in range(self.state.epoch, config.run.epochs):
                    settings = self.plan.at(epoch)
                    finished = self._train_epoch(epoch, settings, stop)
                    if not finished:
                        status = "interrupted"
                        break
                    row = self._end_epoch(epoch, settings)
                    if tensorboard is not None:
                        tensorboard.log(row)
                    if self._stop_agreed(stop):
                        status = "interrupted"
                        break
                    if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < config.run.epochs:
                        status = "stopped"
                        break
            result = self._result(status, time.perf_counter() - started)
            if status == "completed":
                result.final = self.validation.final(self.run_dir, config.model.name)
            elif context.is_main:
                LOG.info("%s after %d/%d epochs; continue with: effnet train --resume %s", status,
                         result.epochs_completed, config.run.epochs, self.run_dir)
            return result
        finally:
            if tensorboard is not None:
                tensorboard.close()
            close_logging(handler)
            if lock is not None:
                lock.release()

    def _log_start(self) -> None:
        if not self.context.is_main:
            return
        config = self.config
        log_run_start(self.run_dir, config, sum(p.numel() for p in self.raw_model.parameters()),
                      len(self.class_names), (len(self.train_set), len(self.val_set)), self.context, self.base_lr,
                      [self.plan.at(e).resolution for e in range(config.run.epochs)])
        if self.resume is not None:
            log_resume(self.resume.path, self.state, config_changes(self.resume.state["config"], config.to_dict()))

    # ---------------------------------------------------------- one epoch
    def _train_epoch(self, epoch: int, settings: EpochSettings, stop: StopRequest) -> bool:
        """Train one epoch (the rest of it, when resuming); False when a signal stopped it (a
        resumable state is saved). The device is read once every ``check_every`` updates (and at
        the epoch's last): see :meth:`_check`."""
        config, context, run = self.config, self.context, self.state
        loader = self._start_epoch(epoch, settings)
        mix = self._mixer(settings)
        bar = progress_bar(len(loader), f"epoch {epoch + 1}/{config.run.epochs} @{settings.resolution}px",
                           config.run.progress and context.is_main)
        bar.update(run.step_in_epoch)
        started = time.perf_counter()
        images_done = 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=context.device)
        losses: list[torch.Tensor] = []  # every micro-batch's loss since the last check, on the device
        updates = 0  # updates since the last check
        if self.snapshot is not None:
            self.snapshot.take()
        try:
            for batch in epoch_batches(loader, config.run.accum_steps, run.step_in_epoch, self._restore_resume_rng):
                loss = self._forward_backward(batch, mix)
                losses.append(loss)
                loss_sum += loss.double() * batch.targets.shape[0]
                images_done += batch.targets.shape[0]
                bar.update(1)
                if not batch.ends_update:
                    continue
                updates += 1
                if updates < self.check_every and not batch.ends_epoch:
                    self._update()
                    continue
                stop_now, total_loss = self._check(losses, stop, loss_sum, epoch, batch.step + 1 - len(losses))
                losses.clear()
                updates = 0
                self._update()
                if self.snapshot is not None:
                    self.snapshot.take()
                seconds = time.perf_counter() - started
                images_seen = images_done * context.world_size
                bar.set_postfix(loss=f"{total_loss / max(images_seen, 1):.4f}", lr=f"{self.schedule.lr:.3g}",
                                img_s=f"{images_seen / max(seconds, 1e-9):.1f}")
                if stop_now and not batch.ends_epoch:
                    self._add_epoch_sums(loss_sum, images_done, started)
                    run.step_in_epoch = batch.step + 1
                    self._save_interrupted(epoch)
                    run.resume_rng = self._rng_state()  # a later fit() continues as a resume from last.pt would
                    return False
        finally:
            bar.close()
        self._add_epoch_sums(loss_sum, images_done, started)
        return True

    def _start_epoch(self, epoch: int, settings: EpochSettings) -> DataLoader:
        """The epoch's loader, regularization and trainable groups; its data order is the saved one
        when an interrupted epoch is replayed, else its RNG states are recorded for a later replay."""
        run, context = self.state, self.context
        loader = self.loaders.for_epoch(settings)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        self.raw_model.set_drop_rate(settings.drop_rate)
        if run.mid_epoch and run.epoch_rng is not None:
            self._set_rng(run.epoch_rng[context.rank])
        else:
            run.epoch_rng = all_gather_objects(self._rng_state(), context)
        self.train_module.train()
        if self.unfreeze is not None:
            self._set_trainable_groups(epoch)
        return loader

    def _forward_backward(self, batch: Batch, mix: MixupCutmix | None) -> torch.Tensor:
        """Forward and backward one micro-batch (gradients averaged over its update); its loss, detached."""
        config, context, device = self.config, self.context, self.context.device
        images = batch.images.to(device, non_blocking=True).contiguous(memory_format=self.memory_format)
        targets = batch.targets.to(device, non_blocking=True)
        if mix is not None:
            images, soft_targets = mix(images, targets)
        sync = contextlib.nullcontext() if batch.ends_update or not context.distributed \
            else self.train_module.no_sync()
        with sync:
            with autocast_context(device, config.run.amp):
                logits = self.train_module(images)
            logits = logits.float()
            if mix is not None:
                loss = soft_target_cross_entropy(logits, soft_targets)
            else:
                loss = F.cross_entropy(logits, targets, label_smoothing=config.augment.label_smoothing)
            self.scaler.scale(loss / batch.group_size).backward()
        return loss.detach()

    def _check(self, losses: list[torch.Tensor], stop: StopRequest, loss_sum: torch.Tensor, epoch: int,
               first_step: int) -> tuple[bool, float]:
        """The one read of the device every ``check_every`` updates, agreed by all processes, made
        before the update that ends the group: whether any process got a stop signal, and the
        epoch's loss sum over all processes. ``losses`` are the micro-batch losses since the last
        check, the first being batch ``first_step`` of the epoch. When one is non-finite in any
        process, the state goes back to what it was after the previous check's update (the updates
        since then may hold it; with ``check_every`` 1 none was made) and :class:`TrainingDiverged`
        is raised."""
        flags = torch.cat([(~torch.isfinite(torch.stack(losses))).double(),
                           torch.tensor([float(stop.requested)], dtype=torch.float64, device=loss_sum.device),
                           loss_sum.reshape(1)])
        values = all_reduce_sum(flags, self.context).tolist()
        bad = next((i for i, flag in enumerate(values[:len(losses)]) if flag > 0), None)
        if bad is not None:
            if self.snapshot is not None:
                self.snapshot.restore()
            # the schedule is back at the update of losses[0]; groups of accum_steps follow from there
            schedule = self.schedule
            lr = schedule.lr_at((schedule.step_count + bad // self.config.run.accum_steps) / schedule.steps_per_epoch)
            raise_loss_diverged(self.run_dir, epoch, first_step + bad, losses[bad], first_step, lr,
                                self.check_every, rolled_back=self.snapshot is not None)
        return values[-2] > 0, values[-1]

    def _set_trainable_groups(self, epoch: int) -> None:
        """Freeze and unfreeze layer groups for ``epoch`` (after ``train()``: frozen BN back to eval)."""
        trainable = finetune.start_epoch(self.raw_model, epoch, self.unfreeze)
        if trainable != self.trainable_groups and self.context.is_main:
            LOG.info("epoch %d: training %s (%s fine-tuning)", epoch + 1, ", ".join(trainable),
                     self.config.finetune.strategy)
        self.trainable_groups = trainable

    def _stop_agreed(self, stop: StopRequest) -> bool:
        """Whether any process got a signal: all must stop at the same update."""
        flag = torch.tensor([float(stop.requested)], device=self.context.device)
        return all_reduce_sum(flag, self.context).item() > 0

    def _add_epoch_sums(self, loss_sum: torch.Tensor, images: int, started: float) -> None:
        sums = self.state.sums
        sums.loss += float(loss_sum.item())
        sums.images += images
        sums.seconds += time.perf_counter() - started

    def _mixer(self, settings: EpochSettings) -> MixupCutmix | None:
        a = self.config.augment
        if settings.mixup_alpha <= 0 and a.cutmix_alpha <= 0:
            return None
        return MixupCutmix(len(self.class_names), mixup_alpha=settings.mixup_alpha, cutmix_alpha=a.cutmix_alpha,
                           prob=a.mix_prob, switch_prob=a.mix_switch_prob, label_smoothing=a.label_smoothing)

    def _update(self) -> None:
        """One optimizer update from the accumulated gradients."""
        clip = self.config.run.clip_grad
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        if self.ema is not None:
            self.ema.update(self.raw_model)

    # ------------------------------------------------------ end of epoch
    def _end_epoch(self, epoch: int, settings: EpochSettings) -> dict[str, Any]:
        """Evaluate, record and save the finished epoch; the run state moves to the next one."""
        config, context, run = self.config, self.context, self.state
        sums = run.sums
        images = all_reduce_sum(torch.tensor([sums.loss, float(sums.images)], dtype=torch.float64), context)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "img_size": settings.resolution, "lr": self.schedule.lr,
            "train_loss": float(images[0] / max(images[1], 1)),
        }
        models = {"model": self.raw_model}
        if self.ema is not None:
            models["ema"] = self.ema.module
        evals, columns = self.validation.epoch(models)
        row.update(columns)
        row["epoch_time_s"] = sums.seconds
        row["train_img_per_s"] = float(images[1]) / max(sums.seconds, 1e-9)
        source, improved = run.record_epoch(row, {name: result.top1 for name, result in evals.items()},
                                            config.run.keep)
        check_finite_weights(self.raw_model, epoch, self.run_dir)
        run.epoch, run.step_in_epoch, run.sums = epoch + 1, 0, EpochSums()
        state = self._state(source)
        if context.is_main:  # last.pt last: it never records a best epoch whose files are not written yet
            if improved:
                weights = self.ema.module if source == "ema" else self.raw_model
                save_model(weights, self.run_dir / MODEL,
                           extra={"epoch": epoch + 1, "val_top1": evals[source].top1, "weights": source})
                ckpt.save_checkpoint(state, self.run_dir / BEST)
            ckpt.save_checkpoint(state, self.run_dir / LAST)
            write_metrics_csv(run.history, self.run_dir / "metrics.csv")
            plot_curves(run.history, self.run_dir / "curves.png")
            log_epoch(row, config.run.epochs, best=improved and config.run.keep == "best")
        barrier(context)
        return row

    def _state(self, eval_weights: str) -> dict[str, Any]:
        """Everything a resume needs, in ``weights_only``-loadable types."""
        rng = all_gather_objects(self._rng_state(), self.context)
        return ckpt.training_checkpoint(self.state, rng, self.raw_model, self.optimizer, self.schedule, self.scaler,
                                        self.ema, eval_weights, self.config, self.context.world_size,
                                        len(self.train_set))

    def _save_interrupted(self, epoch: int) -> None:
        check_finite_weights(self.raw_model, epoch, self.run_dir)
        state = self._state(self.state.best["weights"] or "model")
        if self.context.is_main:
            ckpt.save_checkpoint(state, self.run_dir / LAST)
            LOG.warning("saved %s at epoch %d, batch %d", self.run_dir / LAST, epoch + 1, self.state.step_in_epoch)
        barrier(self.context)

    # --------------------------------------------------------------- end
    def _result(self, status: str, seconds: float) -> TrainResult:
        run = self.state
        return TrainResult(self.run_dir, status, len(run.history), self.config.run.epochs, run.best["top1"],
                           run.best["epoch"], run.best["weights"], list(self.class_names), list(run.history),
                           wall_time_s=seconds, train_images=len(self.train_set), is_main=self.context.is_main)


def train(config: TrainConfig, run_dir: str | Path | None = None, resume: str | Path | None = None,
          stop_after: int | None = None, overwrite: bool = False) -> TrainResult:
    """Build a :class:`Trainer`, run it, and leave the process group (under ``torchrun``)."""
    trainer = Trainer(config, run_dir, resume, overwrite)
    try:
        return trainer.fit(stop_after)
    finally:
        shutdown(trainer.context)
