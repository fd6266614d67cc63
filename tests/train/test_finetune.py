"""Transfer-learning pieces: the new head, freezing strategies, frozen BatchNorm, gradual
unfreezing order and discriminative learning rates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effnet import create_model
from effnet.train.finetune import (
    UnfreezeSchedule,
    apply_freezing,
    freeze_bn_of_frozen,
    layer_decay_groups,
    layer_groups,
    prepare_for_finetuning,
    start_epoch,
    unfrozen_groups_at,
)

GROUPS = ["classifier", "head", *(f"stages.{i}" for i in range(6, -1, -1)), "stem"]


@pytest.fixture
def model():
    return create_model("efficientnet_b0", num_classes=1000, width=0.25, depth=0.25, resolution=32)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, schedule: UnfreezeSchedule,
                steps: int = 2) -> None:
    generator = torch.Generator().manual_seed(1)
    model.train()
    start_epoch(model, epoch, schedule)
    for _ in range(steps):
        images = torch.randn(4, 3, 32, 32, generator=generator)
        labels = torch.randint(0, model.num_classes, (4,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()


def test_groups_cover_every_parameter_once_top_to_bottom(model):
    groups = layer_groups(model)
    assert [g.name for g in groups] == GROUPS and [g.depth for g in groups] == list(range(10))
    grouped = [id(p) for g in groups for p in g.module.parameters()]
    assert len(grouped) == len(set(grouped)) and set(grouped) == {id(p) for p in model.parameters()}


def test_new_head_has_the_dataset_size_and_fresh_weights(model):
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier")}
    old = model.classifier.weight.detach().clone()
    prepare_for_finetuning(model, 7, [f"c{i}" for i in range(7)])
    assert model.classifier.weight.shape == (7, model.num_features) and model.classifier.bias.shape == (7,)
    assert model.num_classes == 7 and model.class_names == [f"c{i}" for i in range(7)]
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert not torch.equal(model.classifier.weight[:7], old[:7])
    assert all(torch.equal(v, body[k]) for k, v in model.state_dict().items() if k in body)
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        prepare_for_finetuning(model, 4, ["a", "b", "c"])
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        prepare_for_finetuning(model, 0)


def test_gradual_schedule_unfreezes_whole_groups_from_the_top(model):
    gradual = UnfreezeSchedule("gradual")
    assert [unfrozen_groups_at(model, epoch, gradual) for epoch in range(3)] == [
        ["classifier"], ["classifier", "head"], ["classifier", "head", "stages.6"]]
    assert unfrozen_groups_at(model, 8, gradual)[-1] == "stages.0"
    assert unfrozen_groups_at(model, 9, gradual) == GROUPS == unfrozen_groups_at(model, 50, gradual)
    slow = UnfreezeSchedule("gradual", epochs_per_group=2, initial_groups=2)
    assert [len(unfrozen_groups_at(model, epoch, slow)) for epoch in range(6)] == [2, 2, 3, 3, 4, 4]
    assert all(unfrozen_groups_at(model, e, UnfreezeSchedule("linear")) == ["classifier"] for e in (0, 5))
    assert unfrozen_groups_at(model, 0, UnfreezeSchedule("full")) == GROUPS
    with pytest.raises(ValueError, match="unknown fine-tuning strategy 'partial'; choose one of linear, full"):
        UnfreezeSchedule("partial")
    with pytest.raises(ValueError, match="unknown layer groups \\['stages.9'\\]"):
        apply_freezing(model, ["classifier", "stages.9"])


def test_linear_probe_moves_only_the_classifier_and_frozen_bn_statistics_stay(model):
    prepare_for_finetuning(model, 5)
    optimizer = torch.optim.AdamW(layer_decay_groups(model, 1e-2, layer_decay=0.5, weight_decay=0.1))
    before = snapshot(model)
    train_steps(model, optimizer, epoch=0, schedule=UnfreezeSchedule("linear"))
    assert changed(before, model) == {"classifier.weight", "classifier.bias"}  # BN statistics included
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.dropout.training  # only BatchNorm is held in eval


def test_gradual_unfreezing_trains_the_unfrozen_groups_with_the_same_optimizer(model):
    prepare_for_finetuning(model, 5)
    schedule = UnfreezeSchedule("gradual")
    optimizer = torch.optim.AdamW(layer_decay_groups(model, 1e-2, layer_decay=0.8, weight_decay=0.1))
    train_steps(model, optimizer, epoch=0, schedule=schedule)
    before = snapshot(model)
    train_steps(model, optimizer, epoch=2, schedule=schedule)  # classifier, head and stage 6 now train
    moved = {key.split(".")[0] if not key.startswith("stages") else ".".join(key.split(".")[:2])
             for key in changed(before, model)}
    assert moved == {"classifier", "head", "stages.6"}
    assert {k for k in changed(before, model) if "running_mean" in k} == {
        k for k in before if "running_mean" in k and k.startswith(("head", "stages.6"))}
    frozen_bn = [m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
                 and name.startswith(("stem", "stages.0", "stages.5"))]
    trained_bn = [m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
                  and name.startswith(("head", "stages.6"))]
    assert frozen_bn and not any(m.training for m in frozen_bn) and all(m.training for m in trained_bn)


def test_freeze_bn_of_frozen_follows_requires_grad():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)).train()
    net[1].requires_grad_(False)
    assert freeze_bn_of_frozen(net) == 1
    assert not net[1].training and net[2].training


def test_param_groups_give_decayed_learning_rates_and_no_decay_for_bn_and_biases(model):
    apply_freezing(model, ["classifier"])  # frozen parameters are still grouped (for later unfreezing)
    groups = layer_decay_groups(model, base_lr=1e-3, layer_decay=0.5, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == [n + s for n in GROUPS for s in ("", ".no_decay")]
    for depth, name in enumerate(GROUPS):
        for key in (name, name + ".no_decay"):
            assert by_name[key]["lr"] == pytest.approx(1e-3 * 0.5 ** depth)
            assert by_name[key]["lr_scale"] == pytest.approx(0.5 ** depth)
        assert by_name[name]["weight_decay"] == 0.05 and by_name[name + ".no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["name"].endswith(".no_decay") for p in g["params"]}
    decay = {names[id(p)] for g in groups if not g["name"].endswith(".no_decay") for p in g["params"]}
    assert no_decay == {n for n, p in model.named_parameters() if p.ndim == 1}
    assert "classifier.bias" in no_decay and "stem.bn.weight" in no_decay and "head.bn.bias" in no_decay
    assert decay == {n for n, p in model.named_parameters() if p.ndim > 1}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert [p.requires_grad for p in model.parameters()].count(True) == 2  # grouping left freezing alone
    with pytest.raises(ValueError, match="layer_decay=1.5"):
        layer_decay_groups(model, 1e-3, layer_decay=1.5)
