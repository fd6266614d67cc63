"""Optimizers: TF-style RMSprop matches the reference formulas (and timm's port), weight decay
skips BN and biases, learning rates scale with the batch, schedules and EMA follow their math."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from effnet import create_model
from effnet.train.config import AugmentSettings, EmaSettings, OptimizerSettings, ProgressiveSettings, ScheduleSettings
from effnet.train.ema import ModelEMA
from effnet.train.optim import RMSpropTF, build_optimizer, scaled_lr, weight_decay_groups
from effnet.train.progressive import ProgressivePlan
from effnet.train.schedule import LRSchedule


def _tf_rmsprop_reference(grads: list[torch.Tensor], lrs: list[float], p0: torch.Tensor, weight_decay: float
                          ) -> torch.Tensor:
    """TensorFlow's RMSPropOptimizer written out in float64: ms starts at 1, eps inside the root,
    lr inside the momentum."""
    p = p0.double().clone()
    ms, mom = torch.ones_like(p), torch.zeros_like(p)
    for g, lr in zip(grads, lrs, strict=True):
        g = g.double() + weight_decay * p
        ms = 0.9 * ms + 0.1 * g * g
        mom = 0.9 * mom + lr * g / torch.sqrt(ms + 1e-3)
        p = p - mom
    return p


def test_rmsprop_tf_follows_the_tensorflow_formulas() -> None:
    generator = torch.Generator().manual_seed(0)
    p0 = torch.randn(5, 4, generator=generator)
    grads = [torch.randn(5, 4, generator=generator) for _ in range(6)]
    lrs = [0.016, 0.016, 0.01, 0.01, 0.005, 0.001]  # lr changes must not act on past momentum
    param = nn.Parameter(p0.clone())
    optimizer = RMSpropTF([param], lr=lrs[0], weight_decay=1e-2)
    for g, lr in zip(grads, lrs, strict=True):
        optimizer.param_groups[0]["lr"] = lr
        param.grad = g.clone()
        optimizer.step()
    expected = _tf_rmsprop_reference(grads, lrs, p0, 1e-2)
    assert torch.allclose(param.detach().double(), expected, atol=1e-6)

    torch_param = nn.Parameter(p0.clone())
    torch_rmsprop = torch.optim.RMSprop([torch_param], lr=lrs[0], alpha=0.9, eps=1e-3, momentum=0.9)
    torch_param.grad = grads[0].clone()
    torch_rmsprop.step()
    # PyTorch's RMSprop (ms from 0, eps outside the root) takes a ~3x larger first step.
    ours_step = (p0 - _tf_rmsprop_reference(grads[:1], lrs[:1], p0, 0.0).float()).abs().mean()
    assert (p0 - torch_param.detach()).abs().mean() > 2 * ours_step


def test_rmsprop_tf_matches_timm_port() -> None:
    timm_optim = pytest.importorskip("timm.optim")
    generator = torch.Generator().manual_seed(1)
    p0 = torch.randn(7, generator=generator)
    ours, theirs = nn.Parameter(p0.clone()), nn.Parameter(p0.clone())
    a = RMSpropTF([ours], lr=0.01, weight_decay=1e-5)
    b = timm_optim.RMSpropTF([theirs], lr=0.01, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-5,
                             lr_in_momentum=True)
    for step in range(5):
        g = torch.randn(7, generator=generator)
        for optimizer, param in ((a, ours), (b, theirs)):
            optimizer.param_groups[0]["lr"] = 0.01 / (step + 1)
            param.grad = g.clone()
            optimizer.step()
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_no_weight_decay_on_batchnorm_and_biases() -> None:
    model = create_model("efficientnet_b0", num_classes=10, width=0.25, depth=0.25)
    decay, no_decay = weight_decay_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, param in model.named_parameters():
        is_bn_or_bias = name.endswith("bias") or ".bn." in name
        assert (id(param) in no_decay_ids) == is_bn_or_bias, name
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize(("name", "cls"), [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD),
                                           ("rmsprop_tf", RMSpropTF)])
def test_build_optimizer(name: str, cls: type) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = build_optimizer(model, OptimizerSettings(name=name, weight_decay=0.1), lr=0.5)
    assert isinstance(optimizer, cls)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert all(g["lr"] == 0.5 for g in optimizer.param_groups)
    if name == "sgd":
        assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.9
    if name == "rmsprop_tf":
        assert optimizer.param_groups[0]["eps"] == 1e-3
    else:
        assert optimizer.defaults["fused"] is True  # one pass over memory per step on the CPU


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_steps_equal_the_per_tensor_steps(name: str) -> None:
    torch.manual_seed(0)
    fused_model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    plain_model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    plain_model.load_state_dict(fused_model.state_dict())
    settings = OptimizerSettings(name=name, weight_decay=0.1)
    fused = build_optimizer(fused_model, settings, lr=0.01)
    plain_class = type(fused)
    plain = plain_class(weight_decay_groups(plain_model, 0.1), lr=0.01, **({"momentum": 0.9, "nesterov": True}
                                                                     if name == "sgd" else {}), foreach=False)
    for _ in range(3):
        x = torch.randn(2, 3, 6, 6, dtype=torch.double)
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for fused_param, plain_param in zip(fused_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(fused_param, plain_param)


def test_lr_scales_with_the_global_batch() -> None:
    assert scaled_lr(OptimizerSettings(lr=0.016, lr_base_batch=256), 1024) == pytest.approx(0.064)
    assert scaled_lr(OptimizerSettings(lr=0.001, lr_base_batch=None), 1024) == 0.001


def _schedule(settings: ScheduleSettings, epochs: int = 10, steps: int = 4) -> LRSchedule:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    return LRSchedule(optimizer, settings, base_lr=0.1, epochs=epochs, steps_per_epoch=steps)


def test_warmup_then_cosine() -> None:
    schedule = _schedule(ScheduleSettings(name="cosine", warmup_epochs=2, warmup_lr_ratio=0.0, min_lr_ratio=0.1))
    assert schedule.lr_at(0) == 0.0
    assert schedule.lr_at(1) == pytest.approx(0.05)
    assert schedule.lr_at(2) == pytest.approx(0.1)
    assert schedule.lr_at(6) == pytest.approx(0.01 + 0.09 * 0.5)  # halfway through the decay
    assert schedule.lr_at(10) == pytest.approx(0.01)
    for _ in range(5):
        schedule.step()
    assert schedule.optimizer.param_groups[0]["lr"] == pytest.approx(schedule.lr_at(5 / 4))


def test_tf_step_schedule() -> None:
    schedule = _schedule(ScheduleSettings(name="step", warmup_epochs=5, warmup_lr_ratio=0.0), epochs=350)
    assert schedule.lr_at(2.5) == pytest.approx(0.05)
    assert schedule.lr_at(5.0) == pytest.approx(0.1 * 0.97 ** 2)  # floor(5 / 2.4) = 2 decays
    assert schedule.lr_at(7.19) == pytest.approx(0.1 * 0.97 ** 2)
    assert schedule.lr_at(7.2) == pytest.approx(0.1 * 0.97 ** 3)
    assert schedule.lr_at(349) == pytest.approx(0.1 * 0.97 ** math.floor(349 / 2.4))


def test_schedule_state_keeps_the_position_in_epochs() -> None:
    schedule = _schedule(ScheduleSettings(), steps=4)
    for _ in range(6):
        schedule.step()
    resumed = _schedule(ScheduleSettings(), steps=8)  # twice the steps per epoch (smaller batch)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.step_count == 12 and resumed.lr == pytest.approx(schedule.lr)


def test_ema_averages_weights_and_buffers() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9, warmup=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    for key, value in ema.module.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, start[key] + 0.1), key
    assert ema.module[1].num_batches_tracked.item() == 7
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_warmup_starts_with_a_low_decay() -> None:
    ema = ModelEMA(nn.Linear(1, 1), decay=EmaSettings().decay, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.updates = 990
    assert ema.current_decay() == pytest.approx(0.991)
    ema.updates = 10 ** 6
    assert ema.current_decay() == EmaSettings().decay


def test_linear_progressive_resizing() -> None:
    plan = ProgressivePlan(ProgressiveSettings(mode="linear", start_size=128, size_step=32), AugmentSettings(),
                           resolution=224, epochs=5, drop_rate=0.2)
    assert [plan.at(e).resolution for e in range(5)] == [128, 160, 192, 192, 224]  # 176 rounds up
    assert {plan.at(e).drop_rate for e in range(5)} == {0.2}  # the model's own rate, every epoch


def test_staged_progressive_learning_grows_regularization_with_size() -> None:
    settings = ProgressiveSettings(mode="staged", start_size=128, stages=4, ra_magnitude=(5, 10),
                                   drop_rate=(0.1, 0.3), mixup_alpha=(0.0, 0.2))
    plan = ProgressivePlan(settings, AugmentSettings(auto_augment="randaugment"), resolution=224, epochs=8,
                           drop_rate=0.2)
    stages = [plan.at(e) for e in range(0, 8, 2)]
    assert [s.resolution for s in stages] == [128, 160, 192, 224]
    assert [plan.at(e).resolution for e in range(8)] == [128, 128, 160, 160, 192, 192, 224, 224]
    assert [s.ra_magnitude for s in stages] == [5, 7, 8, 10]
    assert [round(s.drop_rate, 4) for s in stages] == [0.1, 0.1667, 0.2333, 0.3]
    assert [round(s.mixup_alpha, 4) for s in stages] == [0.0, 0.0667, 0.1333, 0.2]


def test_progressive_start_above_the_final_size_means_no_resizing() -> None:
    plan = ProgressivePlan(ProgressiveSettings(mode="linear", start_size=128), AugmentSettings(), resolution=64,
                           epochs=3, drop_rate=0.2)
    assert {plan.at(e).resolution for e in range(3)} == {64}
