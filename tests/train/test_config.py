"""Recipes and overrides: every shipped recipe loads, overrides are typed, mistakes are named."""

from __future__ import annotations

import logging
import re
from importlib import resources

import pytest

from effnet.cli import main
from effnet.errors import ConfigError
from effnet.registry import default_train_size, get_entry
from effnet.train.config import TrainConfig
from effnet.train.progressive import ProgressivePlan
from effnet.train.recipes import (
    apply_overrides,
    build_config,
    load_recipe,
    parse_assignment,
    read_config,
    recipe_names,
    save_config,
)


def test_shipped_recipes_load_and_validate() -> None:
    names = recipe_names()
    assert {"seed", "paper", "torchvision", "finetune", "demo", "demo_finetune"} <= set(names)
    for name in names:
        config = build_config(name)
        assert config.recipe == name


def test_paper_recipe_is_the_reference() -> None:
    config = build_config("paper")
    o, s = config.optimizer, config.schedule
    assert (o.name, o.lr, o.lr_base_batch, o.alpha, o.momentum, o.eps, o.weight_decay) == \
        ("rmsprop_tf", 0.016, 256, 0.9, 0.9, 1e-3, 1e-5)
    assert (s.name, s.decay_rate, s.decay_epochs, s.warmup_epochs) == ("step", 0.97, 2.4, 5)
    assert config.augment.label_smoothing == 0.1 and config.ema.decay == 0.9999


def test_demo_recipes_never_flip_digits() -> None:
    for name in ("demo", "demo_finetune"):
        assert build_config(name).augment.hflip == 0.0


def test_demo_recipe_turns_digits_on_black() -> None:
    augment = build_config("demo").augment
    assert augment.degrees > 0 and augment.shear > 0
    assert augment.fill == 0  # the digits are white on black: a grey fill would frame every turned digit


def test_assignments_are_typed_from_the_field() -> None:
    config = build_config("seed", assignments=["optimizer.lr=0.01", "optimizer.weight_decay=1e-5",
                                               "augment.scale=[0.5, 1]", "run.amp=bf16", "run.clip_grad=null",
                                               "model.overrides.width=0.5", "run.compile=true"])
    assert config.optimizer.lr == 0.01
    assert config.optimizer.weight_decay == 1e-5  # YAML reads "1e-5" as text; the float field converts it
    assert config.augment.scale == (0.5, 1.0)
    assert config.run.amp == "bf16" and config.run.clip_grad is None and config.run.compile is True
    assert config.model.overrides == {"width": 0.5}


def test_flag_overrides_skip_missing_values() -> None:
    config = build_config("seed", {"run.epochs": 3, "data.img_size": None})
    assert config.run.epochs == 3 and config.data.img_size is None


def test_pretrained_takes_a_flag_or_a_tag() -> None:
    assert build_config("seed", assignments=["model.pretrained=true"]).model.pretrained is True
    assert build_config("seed", assignments=["model.pretrained=tf_lite"]).model.pretrained == "tf_lite"


def test_zero_init_residual_is_refused_on_pretrained_weights() -> None:
    with pytest.raises(ValueError, match=r"zero_init_residual=true would erase .*\(model.pretrained=tf_lite\)"):
        build_config("seed", assignments=["model.pretrained=tf_lite", "model.zero_init_residual=true"])
    assert build_config("seed", assignments=["model.zero_init_residual=true"]).model.zero_init_residual


@pytest.mark.parametrize(("assignment", "message"), [
    ("optimizer.lr", "expected SECTION.KEY=VALUE"),
    ("optimiser.lr=0.1", "unknown setting 'optimiser.lr'"),
    ("optimizer.learning_rate=0.1", "optimizer has: name, lr"),
    ("optimizer.name=adam", "optimizer.name='adam' is not one of adamw, sgd, rmsprop_tf"),
    ("run.epochs=ten", "run.epochs expects int"),
    ("run.epochs=0", "run.epochs must be positive"),
    ("augment.scale=0.5", "expects a list of 2 values"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs must be a number of epochs >= 0"),
    ("optimizer.lr=.inf", "optimizer.lr must be positive and finite, got inf"),
    ("progressive.mode=staged", "set augment.auto_augment=randaugment"),
    ("run.check_every=0", "run.check_every must be positive"),
    ("run.activation_memory=lean", "run.activation_memory='lean' is not one of save, recompute"),
])
def test_bad_settings_are_refused_by_name(assignment: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        build_config("seed", assignments=[assignment])


def test_unknown_recipe_lists_the_shipped_ones(tmp_path) -> None:
    with pytest.raises(ValueError, match="shipped recipes: .*seed"):
        load_recipe("seeds")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  name: sgd\n  moment: 0.9\n")
    with pytest.raises(ValueError, match="recipe .*bad.yaml: unknown setting 'optimizer.moment'"):
        build_config(bad)


def test_recipe_file_and_saved_config_round_trip(tmp_path) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("optimizer:\n  name: sgd\n  lr: 0.05\nrun:\n  epochs: 4\n")
    config = build_config(recipe, assignments=["data.batch_size=16"])
    assert (config.recipe, config.optimizer.name, config.run.epochs, config.data.batch_size) == ("mine", "sgd", 4, 16)
    saved = save_config(config, tmp_path / "config.yaml")
    assert read_config(saved) == config
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_apply_overrides_reports_what_changed() -> None:
    config = build_config("seed")
    changed = apply_overrides(config, {"run.epochs": 30, "data.batch_size": 8}, ["optimizer.lr=0.5"])
    assert changed == ["data.batch_size", "optimizer.lr"]
    assert parse_assignment("run.amp=") == ("run.amp", None)


def test_a_config_saved_with_the_old_progressive_dropout_key_still_reads(tmp_path) -> None:
    saved = build_config("paper_v2").to_dict()
    saved["progressive"]["dropout"] = saved["progressive"].pop("drop_rate")
    with pytest.warns(DeprecationWarning, match="progressive.drop_rate"):
        config = TrainConfig.from_dict(saved)
    assert config.progressive.drop_rate == (0.1, 0.3)


@pytest.mark.parametrize("key", ["dropout", "drop_rate", "drop_path_rate"])
def test_dropout_has_one_route(key) -> None:
    with pytest.raises(ConfigError, match=rf"model.overrides.{key}: set dropout with model.drop_rate"):
        build_config("seed", assignments=[f"model.overrides.{key}=0.3"])


def test_staged_learning_and_a_fixed_dropout_are_refused_together() -> None:
    with pytest.raises(ConfigError, match=r"model.drop_rate=0.3 and progressive.mode=staged both set the dropout"):
        build_config("seed", assignments=["model.drop_rate=0.3", "progressive.mode=staged",
                                          "augment.auto_augment=randaugment"])


def test_recipes_describe_settings_not_results() -> None:
    # measured results go stale in a recipe's comments; they belong in the README
    for name in recipe_names():
        text = (resources.files("effnet") / "recipes" / f"{name}.yaml").read_text()
        comments = "".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
        assert not re.search(r"\d+(\.\d+)?%", comments), name


def test_settings_built_without_a_recipe_name_none() -> None:
    config = TrainConfig()
    assert config.recipe is None and TrainConfig.from_dict(config.to_dict()).recipe is None
    assert build_config("paper").recipe == "paper"


def test_paper_v2_recipe_grows_size_and_regularization_by_stage() -> None:
    config = build_config("paper_v2")
    o, s = config.optimizer, config.schedule
    assert (o.name, o.lr, o.lr_base_batch, o.weight_decay, s.name, s.decay_rate) == \
        ("rmsprop_tf", 0.016, 256, 1e-5, "step", 0.97)
    name = config.model.name
    assert name == "efficientnet_v2_s" and config.ema.decay == 0.9999
    config.data.resolve_sizes(get_entry(name).preprocessing, 32, default_train_size(name))
    assert (config.data.img_size, config.data.eval_img_size) == (300, 384)
    plan = ProgressivePlan(config.progressive, config.augment, config.data.img_size, config.run.epochs, 0.2)
    stages = [plan.at(epoch) for epoch in (0, 100, 200, 349)]
    assert [e.resolution for e in stages] == [128, 192, 256, 300]
    assert [e.ra_magnitude for e in stages] == [5, 7, 8, 10]
    assert [e.drop_rate for e in stages] == pytest.approx([0.1, 0.1667, 0.2333, 0.3], abs=1e-3)
    assert all(e.mixup_alpha == 0.0 for e in stages)


def test_a_given_train_size_is_also_the_eval_size() -> None:
    data = build_config("paper_v2", assignments=["data.img_size=64"]).data
    data.resolve_sizes(get_entry("efficientnet_v2_s").preprocessing, 32, 300)
    assert (data.img_size, data.eval_img_size) == (64, 64)


def test_a_recipe_warmup_longer_than_the_run_is_shortened_with_a_notice(caplog):
    with caplog.at_level(logging.WARNING, logger="effnet.train"):
        config = build_config("seed", {"run.epochs": 1})
    assert config.schedule.warmup_epochs == pytest.approx(0.1)
    assert "schedule.warmup_epochs=1 is not shorter than run.epochs=1; warming up for 0.1 epoch(s)" in caplog.text


@pytest.mark.parametrize(("argv", "message"), [
    (["--set", "optimizer.lr=[1"], "--set 'optimizer.lr=[1' is not valid YAML at line 1, column 3"),
    (["--recipe", "RECIPE"], "is not valid YAML at line 2, column 1"),
    (["--lr", "inf"], "optimizer.lr must be positive and finite, got inf"),
])
def test_bad_yaml_and_non_finite_settings_are_one_line_messages(odd_name_data, tmp_path, capsys, argv, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("optimizer: {lr: [1\n")
    argv = [str(recipe) if arg == "RECIPE" else arg for arg in argv]
    assert main(["train", "--data", str(odd_name_data), "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
