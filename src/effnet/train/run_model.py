"""The network a run trains: built, and placed for training.

:func:`model_for_run` builds it. A new run builds it from the ``model`` settings: a registry
model (pretrained or not; head and residual branches optionally zero-initialised), or one of
our trained models given as ``model.pretrained``, which gets a head for the new classes
(:mod:`effnet.train.finetune`). A resumed run rebuilds the checkpoint's exact architecture.
Either way the ``data`` image sizes left unset are resolved from the network, which is then
described with the run's evaluation preprocessing and class names.

:func:`place_for_training` puts it on the device (synchronized BatchNorm across processes
when asked) and wraps the module the loop calls (DDP, ``torch.compile``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError
from ..factory import create_model
from ..model import EfficientNet
from ..registry import default_train_size
from ..weights.trained import model_from_checkpoint
from . import finetune
from .checkpoint import ResumePoint
from .config import RunSettings, TrainConfig
from .distributed import DistContext


def model_for_run(config: TrainConfig, class_names: list[str], resume: ResumePoint | None = None) -> EfficientNet:
    """A new model from the settings, or, when resuming, the checkpoint's exact architecture
    (pretrained weights may have set padding and BN epsilon that the settings do not name).
    Resolves ``config.data``'s image sizes in place."""
    if resume is not None:
        model = model_from_checkpoint(resume.state, "model", origin=str(resume.path))
    else:
        settings = config.model
        options: dict[str, Any] = dict(settings.overrides)
        for key in ("drop_rate", "drop_path_rate"):
            if getattr(settings, key) is not None:
                options[key] = getattr(settings, key)
        start = settings.pretrained if isinstance(settings.pretrained, str) else None
        if start is not None and finetune.is_trained_checkpoint(start):
            model = finetune.start_from_trained(start, class_names, settings.zero_init_head, **options)
            if model.model_name != settings.name:
                raise ConfigError(f"model.pretrained={start} holds a {model.model_name} network but model.name is "
                                  f"{settings.name}; set model.name={model.model_name}")
        else:
            if settings.pretrained:
                options["pretrained"] = settings.pretrained
            try:
                model = create_model(settings.name, num_classes=len(class_names), **options)
            except TypeError as error:
                raise ConfigError(f"model.overrides: {error}") from None
            if settings.zero_init_head:
                model.zero_init_classifier()
            if settings.zero_init_residual:
                model.zero_init_residual()
    data = config.data
    data.resolve_sizes(model.preprocessing, model.feature_info[-1].stride,
                       default_train_size(model.model_name, model.preprocessing.resolution))
    model.describe(preprocessing=replace(model.preprocessing, resolution=data.eval_img_size,
                                         crop_pct=data.crop_pct),
                   class_names=class_names)
    return model


def place_for_training(model: EfficientNet, run: RunSettings, context: DistContext, memory_format: torch.memory_format,
                       find_unused_parameters: bool) -> tuple[EfficientNet, nn.Module]:
    """``model`` on the run's device in ``memory_format`` with the run's activation memory mode
    (its BatchNorm synchronized across processes with ``run.sync_bn``), and the module the loop
    calls: wrapped in DDP under ``torchrun`` (``find_unused_parameters`` when layer groups are
    frozen: they get no gradients, and DDP must not wait for them) and compiled with ``run.compile``."""
    device = context.device
    if run.sync_bn and context.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device=device, memory_format=memory_format)
    model.set_memory_mode(run.activation_memory)
    train_module: nn.Module = model
    if context.distributed:
        train_module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=find_unused_parameters)
    if run.compile:
        train_module = torch.compile(train_module)
    return model, train_module
