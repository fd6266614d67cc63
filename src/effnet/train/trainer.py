"""The training loop: from an image folder to a trained, evaluated, resumable model.

One :class:`Trainer` runs a whole run in one process or as one rank of a ``torchrun`` DDP
job. Every epoch it trains (progressive size and regularization, mixup/cutmix, AMP,
accumulation, clipping, EMA), evaluates raw and EMA weights, writes ``last.pt`` (and
``best.pt`` and ``model.safetensors`` when the best top-1 improves), the metrics CSV,
TensorBoard scalars and the curves PNG. Faults are handled so that work is never lost:

- the device is read (loss finite? stop signal?) once every ``run.check_every`` updates and
  at each epoch's end, so the host runs ahead of the device in between. A non-finite loss
  stops the run at the read that finds it, before that read's update and before anything is
  saved, leaving the last good checkpoint as it was (:class:`TrainingDiverged`). With
  ``check_every`` 1 the bad update is never applied (the BatchNorm statistics have seen its
  forward). Above 1 the updates since the previous read were applied, the bad one possibly
  among them, so the trainer's model, optimizer, EMA, schedule and scaler are put back as
  they were after the previous read's update (:class:`~effnet.train.snapshot.TrainingSnapshot`,
  a copy kept on the device): up to ``check_every - 1`` good updates are undone in memory (on
  disk, everything since the last checkpoint is lost either way);
- SIGINT/SIGTERM are seen at the next read: the run makes the update, saves a resumable
  ``last.pt`` (mid-epoch) and returns with ``status == "interrupted"``; a second signal stops
  at once;
- checkpoints are written atomically, so a kill during a save leaves the previous one.

Fine-tuning (the ``finetune`` settings, :mod:`effnet.finetune`): the optimizer gets one
param group per layer group with its ``lr_scale`` (discriminative rates), and each epoch
starts by freezing and unfreezing layer groups as the strategy says for that epoch (frozen
BatchNorm stays in eval mode). ``model.pretrained`` may also name one of our trained models
(a run directory, ``.pt`` or ``.safetensors``), which then gets a head for the new classes.

Resuming restores model, optimizer, schedule, scaler, EMA, history and every RNG state; an
interrupted epoch replays its data order and skips the batches already trained, so a
resumed run with ``num_workers=0`` follows the uninterrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from ..data.datasets import build_datasets
from ..data.device_decode import (
    DeviceBatchTransform,
    DeviceDecodeLoader,
    EncodedImages,
    collate_encoded,
    decodes_on_device,
)
from ..data.loaders import build_loader
from ..data.transforms import MixupCutmix, eval_transforms, train_transforms
from ..device import autocast_context
from ..errors import ConfigError, EffnetError
from ..factory import create_model
from ..files import atomic_write, remove_stale_temps
from ..model import EfficientNet
from ..registry import default_train_size
from ..weights.io import model_metadata, save_model
from ..weights.trained import BEST, LAST, MODEL, model_from_checkpoint, read_training_checkpoint
from . import checkpoint as ckpt
from . import finetune
from .checkpoint import ResumePoint
from .checks import check_batch_for_batchnorm, check_class_count
from .config import TrainConfig
from .distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown,
)
from .ema import ModelEMA
from .metrics import EvalResult, Predictions, evaluate, find_mistakes
from .optim import build_optimizer, scaled_lr
from .progressive import EpochSettings, ProgressivePlan
from .recipes import apply_overrides, build_config
from .reporting import (
    LOG,
    TensorBoardLog,
    TrainResult,
    close_logging,
    plot_curves,
    progress_bar,
    save_evaluation,
    setup_logging,
    write_metrics_csv,
)
from .rundir import check_fresh_run_dir, check_resume_run_dir, claim_run_dir
from .schedule import LRSchedule
from .snapshot import TrainingSnapshot
from .state import Batch, EpochSums, RunState, epoch_batches

DEFAULT_CUDA_CHECK_EVERY = 8
"""Updates between reads of a CUDA device when ``run.check_every`` is unset: each read drains
the queue of kernels the host has launched ahead, and costs the overlap; on the CPU, where
work is not queued, the device is read at every update."""


class TrainingDiverged(EffnetError, ValueError):
    """The loss became NaN or infinite; the run stopped without saving the bad weights.

    A ``ValueError`` so that the command line reports it as a settings problem.
    """


def default_run_dir(model_name: str, root: str | Path = "runs") -> Path:
    """``runs/<model>-<date>-<time>``."""
    return Path(root) / f"{model_name}-{datetime.now():%Y%m%d-%H%M%S}"


def config_for_run(recipe: str | Path = "seed", overrides: dict[str, Any] | None = None,
                   assignments: list[str] | None = None, resume: ResumePoint | None = None) -> TrainConfig:
    """The config of a new run (recipe + overrides), or of a resumed one (its saved config +
    overrides; the trainer logs what changed)."""
    if resume is None:
        return build_config(recipe, overrides, assignments)
    config = TrainConfig.from_dict(resume.state["config"], source=f"checkpoint {resume.path}")
    apply_overrides(config, overrides or {}, assignments or [])
    return config


def _changes(before: Any, after: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs between two config dicts."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [line for key in dict.fromkeys(list(before) + list(after))
                for line in _changes(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [f"{prefix[:-1]}: {before!r} -> {after!r}"]


class _StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to stop at its next read of the device."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt  # second signal: stop now
        self.signal_name = signal.Signals(signum).name
        LOG.warning("%s received: saving a resumable checkpoint at the next check, within run.check_every updates "
                    "(send it again to stop without saving)", self.signal_name)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against per-class probabilities (mixup/cutmix targets)."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


class _IgnoreStopSignals:
    """A DataLoader ``worker_init_fn`` wrapper: workers ignore SIGINT/SIGTERM (a Ctrl-C reaches the
    whole process group), so only the main process reacts, saves, and then shuts them down."""

    def __init__(self, init_fn: Any) -> None:
        self.init_fn = init_fn

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.init_fn is not None:
            self.init_fn(worker_id)


def _signals_to_main_process(loader: DataLoader) -> DataLoader:
    if loader.num_workers > 0:
        loader.worker_init_fn = _IgnoreStopSignals(loader.worker_init_fn)
    return loader


def _loader_generators(loader: DataLoader) -> list[torch.Generator]:
    found: dict[int, torch.Generator] = {}
    for owner in (loader, loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            found[id(generator)] = generator
    return list(found.values())


class Trainer:
    """A training run; build it with a config (``data.path`` set) and call :meth:`fit`.

    ``resume``: a run directory or checkpoint to continue (or a :class:`ResumePoint` already
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
        self._seed(config.run.seed)
        self._build_data()
        self._build_model()
        self._seed(config.run.seed + self.context.rank)
        self._build_training_state()
        if self.resume is not None:
            self._load_resume_state(self.resume.state)
        self.snapshot = TrainingSnapshot(self.raw_model, self.optimizer, self.schedule, self.ema, self.scaler) \
            if self.check_every > 1 else None  # after a resume, which may give the run a new EMA

    # ----------------------------------------------------------------- set-up
    def _check_settings(self) -> None:
        run, device = self.config.run, self.context.device
        if self.config.data.path is None:
            raise ConfigError("no training data: give --data DIR (a folder of class folders, or train/ and val/)")
        if run.amp == "fp16" and device.type != "cuda":
            raise ConfigError("run.amp=fp16 needs a CUDA device (fp16 training uses CUDA grad scaling); "
                              "use run.amp=bf16 on the CPU")
        if run.sync_bn and self.context.distributed and device.type == "cpu":
            raise ConfigError("run.sync_bn needs CUDA devices (SyncBatchNorm does not run on the CPU); "
                              "drop --sync-bn for CPU runs")
        if run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not run.deterministic

    @staticmethod
    def _seed(seed: int) -> None:
        import random

        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _build_data(self) -> None:
        """Datasets first: bad data paths and empty folders fail before any training work."""
        data = self.config.data
        splits = build_datasets(data.path, val_split=data.val_split, seed=self.config.run.seed, strict=data.strict)
        self.train_set, self.val_set, self.class_names = splits.train, splits.val, list(splits.classes)
        check_class_count(self.class_names, data.allow_single_class, data.path)
        if len(self.train_set) == 0:
            raise ConfigError(f"no usable training images in {data.path}")
        if len(self.val_set) == 0:
            raise ConfigError(f"no validation images for {data.path}: add a val/ folder or set data.val_split")
        for name, dataset in (("train", self.train_set), ("val", self.val_set)):
            if dataset.skipped:
                LOG.warning("%s: skipped %d unusable file(s) (see the warnings above)", name, len(dataset.skipped))
        resumed_classes = self.resume.state["model_meta"]["class_names"] if self.resume is not None else None
        if resumed_classes is not None and resumed_classes != self.class_names:
            raise ConfigError(f"the data's classes {self.class_names} differ from the resumed run's "
                              f"{resumed_classes}; resume with the same data")

    def _build_model(self) -> None:
        """A new model from the settings, or, when resuming, the checkpoint's exact architecture
        (pretrained weights may have set padding and BN epsilon that the settings do not name)."""
        if self.resume is not None:
            model = model_from_checkpoint(self.resume.state, "model", origin=str(self.resume.path))
        else:
            settings = self.config.model
            options: dict[str, Any] = dict(settings.overrides)
            for key in ("drop_rate", "drop_path_rate"):
                if getattr(settings, key) is not None:
                    options[key] = getattr(settings, key)
            start = settings.pretrained if isinstance(settings.pretrained, str) else None
            if start is not None and finetune.is_trained_checkpoint(start):
                model = finetune.start_from_trained(start, self.class_names, settings.zero_init_head, **options)
                if model.model_name != settings.name:
                    raise ConfigError(f"model.pretrained={start} holds a {model.model_name} network but model.name is "
                                      f"{settings.name}; set model.name={model.model_name}")
            else:
                if settings.pretrained:
                    options["pretrained"] = settings.pretrained
                try:
                    model = create_model(settings.name, num_classes=len(self.class_names), **options)
                except TypeError as error:
                    raise ConfigError(f"model.overrides: {error}") from None
                if settings.zero_init_head:
                    model.zero_init_classifier()
                if settings.zero_init_residual:
                    model.zero_init_residual()
        data = self.config.data
        data.resolve_sizes(model.preprocessing, model.feature_info[-1].stride,
                           default_train_size(model.model_name, model.preprocessing.resolution))
        model.describe(preprocessing=replace(model.preprocessing, resolution=data.eval_img_size,
                                             crop_pct=data.crop_pct),
                       class_names=self.class_names)
        self.raw_model: EfficientNet = model

    def _build_training_state(self) -> None:
        config, context = self.config, self.context
        device = context.device
        model = self.raw_model
        self.channels_last = config.run.channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if config.run.sync_bn and context.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device=device, memory_format=self.memory_format)
        model.set_memory_mode(config.run.activation_memory)
        self.raw_model = model
        self.train_module: nn.Module = model
        tuning = config.finetune
        self.unfreeze = finetune.UnfreezeSchedule(tuning.strategy, tuning.epochs_per_group) \
            if tuning.strategy != "full" else None
        self.trainable_groups: list[str] | None = None
        if context.distributed:  # frozen groups get no gradients: DDP must not wait for them
            self.train_module = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.unfreeze is not None)
        if config.run.compile:
            self.train_module = torch.compile(self.train_module)
        self.ema = ModelEMA(model, config.ema.decay, config.ema.warmup) if config.ema.enabled else None

        self.plan = ProgressivePlan(config.progressive, config.augment, config.data.img_size, config.run.epochs,
                                    model.config.drop_rate)
        check_batch_for_batchnorm(config.data.batch_size, len(self.train_set), self.plan.smallest_size(),
                                  model.feature_info[-1].stride)
        self.decode_on_device = decodes_on_device(config.data.decode, device)
        self.val_set.transform = eval_transforms(model.preprocessing)
        self.val_loader = self._build_val_loader()
        self._train_loader: DataLoader | DeviceDecodeLoader | None = None
        self._loader_key: tuple | None = None
        batches = len(self._loader_for(self.plan.at(0)))
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

    def _build_val_loader(self) -> DataLoader | DeviceDecodeLoader:
        data, context = self.config.data, self.context
        encoded = self.decode_on_device
        dataset = EncodedImages(self.val_set) if encoded else self.val_set
        if context.distributed:  # a shard per rank, no padding: every image counts once
            dataset = Subset(dataset, range(context.rank, len(self.val_set), context.world_size))
        loader = _signals_to_main_process(build_loader(
            dataset, data.eval_batch_size or 2 * data.batch_size, train=False, num_workers=data.num_workers,
            distributed=False, seed=self.config.run.seed, collate_fn=collate_encoded if encoded else None))
        return self._on_device(loader, self.val_set.transform)

    def _on_device(self, loader: DataLoader, transform: Callable) -> DataLoader | DeviceDecodeLoader:
        """With ``data.decode`` on the device, ``loader`` yields encoded images: decode and
        transform its batches there."""
        if not self.decode_on_device:
            return loader
        return DeviceDecodeLoader(loader, DeviceBatchTransform(transform, self.context.device, self.memory_format))

    def _loader_for(self, settings: EpochSettings) -> DataLoader | DeviceDecodeLoader:
        """The training loader for an epoch's size and magnitude (rebuilt when they change)."""
        key = (settings.resolution, settings.ra_magnitude)
        if self._train_loader is None or key != self._loader_key:
            a = self.config.augment
            self.train_set.transform = train_transforms(
                self.raw_model.preprocessing, resolution=settings.resolution, scale=a.scale, hflip=a.hflip,
                color_jitter=a.color_jitter, auto_augment=a.auto_augment, ra_magnitude=settings.ra_magnitude,
                ra_num_ops=a.ra_num_ops, re_prob=a.re_prob, degrees=a.degrees, shear=a.shear, fill=a.fill,
                for_tensors=self.decode_on_device)
            encoded = self.decode_on_device
            loader = _signals_to_main_process(build_loader(
                EncodedImages(self.train_set) if encoded else self.train_set, self.config.data.batch_size, train=True,
                num_workers=self.config.data.num_workers, distributed=self.context.distributed,
                seed=self.config.run.seed, collate_fn=collate_encoded if encoded else None))
            self._train_loader = self._on_device(loader, self.train_set.transform)
            self._loader_key = key
        return self._train_loader

    def _load_resume_state(self, state: dict[str, Any]) -> None:
        self.state = run = RunState.from_dict(state, self.context.rank, self.context.world_size)
        # The loader whose generator states were saved: the epoch in progress, or the one just ended.
        self._loader_for(self.plan.at(run.epoch if run.mid_epoch else max(run.epoch - 1, 0)))
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
        if not run.mid_epoch:
            self._restore_resume_rng()

    # ------------------------------------------------------------------- RNG
    def _rng_state(self) -> dict[str, Any]:
        state = ckpt.rng_state()
        loader = self._train_loader
        state["loader"] = [g.get_state() for g in _loader_generators(loader)] if loader is not None else []
        return state

    def _set_rng(self, state: dict[str, Any]) -> None:
        ckpt.set_rng_state(state)
        if self._train_loader is not None:
            generators = _loader_generators(self._train_loader)
            for generator, saved in zip(generators, state.get("loader", []), strict=False):
                generator.set_state(saved)

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
            for stale in remove_stale_temps(self.run_dir):
                LOG.warning("removed %s, left by a save that did not finish", stale.name)
            from .recipes import save_config

            atomic_write(self.run_dir / "config.yaml", lambda temp: save_config(config, temp))
        handler = setup_logging(self.run_dir if context.is_main else None, context.is_main)
        try:
            self._log_start()
            if context.is_main and config.run.tensorboard:
                tensorboard = TensorBoardLog(self.run_dir / "tensorboard", purge_step=self.state.epoch + 1)
            status = "completed"
            with _StopRequest() as stop:
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
                result.final = self._finish()
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
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        LOG.info("run %s: %s (%s params), %d classes, %d train / %d val images, recipe %s",
                 self.run_dir, config.model.name, f"{n_params:,}", len(self.class_names), len(self.train_set),
                 len(self.val_set), config.recipe)
        LOG.info("device %s x %d process(es), batch %d x %d accumulation, lr %.4g (%s, %s schedule), "
                 "image size %s -> eval %d, amp %s", self.context.device, self.context.world_size,
                 config.data.batch_size, config.run.accum_steps, self.base_lr, config.optimizer.name,
                 config.schedule.name, self._size_text(), config.data.eval_img_size, config.run.amp or "off")
        if config.model.pretrained:
            LOG.info("starting from pretrained weights: %s", config.model.pretrained)
        tuning = config.finetune
        if tuning.active:
            LOG.info("fine-tuning: %s strategy%s, layer decay %g", tuning.strategy,
                     f" (one more layer group every {tuning.epochs_per_group} epoch(s))"
                     if tuning.strategy == "gradual" else "", tuning.layer_decay)
        if self.resume is not None:
            run = self.state
            where = f"epoch {run.epoch + 1}" + (f", batch {run.step_in_epoch + 1}" if run.mid_epoch else "")
            LOG.info("resuming %s from %s", self.resume.path, where)
            changes = _changes(self.resume.state["config"], config.to_dict())
            if changes:
                LOG.warning("resuming with changed settings (the run will not match an uninterrupted one): %s",
                            "; ".join(changes))

    def _size_text(self) -> str:
        sizes = sorted({self.plan.at(e).resolution for e in range(self.config.run.epochs)})
        return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}..{sizes[-1]} ({self.config.progressive.mode})"

    # ---------------------------------------------------------- one epoch
    def _train_epoch(self, epoch: int, settings: EpochSettings, stop: _StopRequest) -> bool:
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
        loader = self._loader_for(settings)
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

    def _check(self, losses: list[torch.Tensor], stop: _StopRequest, loss_sum: torch.Tensor, epoch: int,
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
            self._diverged(epoch, first_step + bad, losses[bad], first_step, lr)
        return values[-2] > 0, values[-1]

    def _set_trainable_groups(self, epoch: int) -> None:
        """Freeze and unfreeze layer groups for ``epoch`` (after ``train()``: frozen BN back to eval)."""
        trainable = finetune.start_epoch(self.raw_model, epoch, self.unfreeze)
        if trainable != self.trainable_groups and self.context.is_main:
            LOG.info("epoch %d: training %s (%s fine-tuning)", epoch + 1, ", ".join(trainable),
                     self.config.finetune.strategy)
        self.trainable_groups = trainable

    def _stop_agreed(self, stop: _StopRequest) -> bool:
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

    def _diverged(self, epoch: int, step: int, loss: torch.Tensor, checked: int, lr: float) -> None:
        """Report a non-finite loss at batch ``step``, trained at ``lr``; the weights are those
        before batch ``checked``."""
        last = self.run_dir / LAST
        kept, then = ((f"the last good checkpoint {last} is kept", f"resume with --resume {self.run_dir} or start "
                       "again") if last.exists() else ("no checkpoint had been written yet", "start again"))
        value = loss.item()
        what = f"{value}" if not math.isfinite(value) else "non-finite in another process"
        lost = (f" with the state it had before batch {checked + 1}, at the last check (the device is read every "
                f"run.check_every={self.check_every} updates: up to {self.check_every - 1} good updates are lost)"
                if self.snapshot is not None else "")
        message = (f"the loss became {what} at epoch {epoch + 1}, batch {step + 1} (lr {lr:.4g}); "
                   f"the run stopped{lost} and {kept}. Lower the learning rate (--set optimizer.lr=...), clip "
                   f"gradients (--set run.clip_grad=1.0) or use full precision (--set run.amp=null), then {then}.")
        LOG.error(message)
        raise TrainingDiverged(message)

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
        evals = {"model": self._evaluate(self.raw_model)}
        row.update(val_loss=evals["model"].loss, val_top1=evals["model"].top1, val_top5=evals["model"].top5)
        if self.ema is not None:
            evals["ema"] = self._evaluate(self.ema.module)
            row.update(ema_val_loss=evals["ema"].loss, ema_val_top1=evals["ema"].top1, ema_val_top5=evals["ema"].top5)
        row["epoch_time_s"] = sums.seconds
        row["train_img_per_s"] = float(images[1]) / max(sums.seconds, 1e-9)
        if config.run.keep == "last":  # nothing is chosen on the validation images
            source = "ema" if "ema" in evals else "model"
            improved = True
        else:
            source = max(evals, key=lambda k: evals[k].top1)
            improved = run.improves(evals[source].top1)
        if improved:
            run.best = {"top1": evals[source].top1, "epoch": epoch + 1, "weights": source}
        run.history.append(row)
        self._check_finite_weights(epoch)
        run.epoch, run.step_in_epoch, run.sums = epoch + 1, 0, EpochSums()
        state = self._state(source)
        if context.is_main:
            ckpt.save_checkpoint(state, self.run_dir / LAST)
            if improved:
                ckpt.save_checkpoint(state, self.run_dir / BEST)
                weights = self.ema.module if source == "ema" else self.raw_model
                save_model(weights, self.run_dir / MODEL,
                           extra={"epoch": epoch + 1, "val_top1": evals[source].top1, "weights": source})
            write_metrics_csv(run.history, self.run_dir / "metrics.csv")
            plot_curves(run.history, self.run_dir / "curves.png")
            ema_text = f", EMA {row['ema_val_top1']:.2f}%" if "ema_val_top1" in row else ""
            LOG.info("epoch %d/%d @%dpx: train loss %.4f, val loss %.4f, top-1 %.2f%%%s, top-5 %.2f%%, "
                     "%.1f img/s, %.0fs%s", epoch + 1, config.run.epochs, settings.resolution, row["train_loss"],
                     row["val_loss"], row["val_top1"], ema_text, row["val_top5"], row["train_img_per_s"],
                     row["epoch_time_s"], " (best)" if improved and config.run.keep == "best" else "")
        barrier(context)
        return row

    def _evaluate(self, model: nn.Module, keep_predictions: bool = False) -> EvalResult:
        return evaluate(model, self.val_loader, len(self.class_names), self.context.device,
                        amp=self.config.run.amp, channels_last=self.channels_last, context=self.context,
                        keep_predictions=keep_predictions)

    def _check_finite_weights(self, epoch: int) -> None:
        for name, tensor in self.raw_model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                message = (f"weight {name} became non-finite in epoch {epoch + 1}; nothing was saved and the last "
                           f"good checkpoint in {self.run_dir} is kept. Lower the learning rate or clip gradients "
                           "(--set run.clip_grad=1.0).")
                LOG.error(message)
                raise TrainingDiverged(message)

    def _state(self, eval_weights: str) -> dict[str, Any]:
        """Everything a resume needs, in ``weights_only``-loadable types."""
        rng = all_gather_objects(self._rng_state(), self.context)
        return {
            "format": "effnet-train", "format_version": 1,
            **self.state.to_dict(rng),
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "eval_weights": eval_weights,
            "config": self.config.to_dict(),
            "model_meta": model_metadata(self.raw_model),
            "world_size": self.context.world_size,
        }

    def _save_interrupted(self, epoch: int) -> None:
        self._check_finite_weights(epoch)
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

    def _finish(self) -> EvalResult:
        """Evaluate the best weights; write the confusion matrix and the misclassified images."""
        best = read_training_checkpoint(self.run_dir / BEST) if self.context.is_main else None
        best = broadcast_object(best, self.context)
        model = model_from_checkpoint(best).to(self.context.device, memory_format=self.memory_format)
        final = self._evaluate(model, keep_predictions=True)
        shards = all_gather_objects(final.predictions, self.context)
        if self.context.is_main:
            final.predictions = Predictions.interleave(shards)
            final.mistakes = find_mistakes(final.predictions, self.val_set.samples, self.class_names,
                                           self.val_set.skipped)
            title = f"{self.config.model.name}, epoch {best['best']['epoch']} ({best['eval_weights']} weights): " \
                    f"top-1 {final.top1:.2f}%"
            save_evaluation(final, self.class_names, self.run_dir, title)
            LOG.info("best: epoch %d (%s weights), val top-1 %.2f%%, top-5 %.2f%%; model in %s",
                     best["best"]["epoch"], best["eval_weights"], final.top1, final.top5, self.run_dir / MODEL)
        return final


def train(config: TrainConfig, run_dir: str | Path | None = None, resume: str | Path | None = None,
          stop_after: int | None = None, overwrite: bool = False) -> TrainResult:
    """Build a :class:`Trainer`, run it, and leave the process group (under ``torchrun``)."""
    trainer = Trainer(config, run_dir, resume, overwrite)
    try:
        return trainer.fit(stop_after)
    finally:
        shutdown(trainer.context)
