"""Recipes and overrides: the YAML files a run starts from, ``section.key=value`` assignments
from the command line, and a run's saved ``config.yaml``.

A recipe (``src/effnet/recipes/<name>.yaml``, or any YAML path) sets some fields of a
:class:`~effnet.train.config.TrainConfig`; the rest keep their defaults. Overrides go on top.
A resumed run starts from the config saved in its checkpoint instead, or from its run
folder's ``config.yaml`` where the user edited it since (:func:`config_for_run`; any setting
but the architecture, :data:`FIXED_ON_RESUME`); :func:`config_changes` lists what changed.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import ConfigError
from ..files import input_file
from .config import TrainConfig, get_value, set_value

if TYPE_CHECKING:
    from .checkpoint import ResumePoint

LOG = logging.getLogger("effnet.train")
RUN_CONFIG = "config.yaml"
FIXED_ON_RESUME = ("model.name", "model.overrides")
"""Settings a resumed run cannot change: its checkpoint holds weights of that architecture."""


def recipe_names() -> list[str]:
    """The recipes shipped with the package."""
    return sorted(p.name[:-5] for p in _recipe_dir().iterdir() if p.name.endswith(".yaml"))


def _recipe_dir() -> Any:
    return resources.files("effnet") / "recipes"


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """A recipe's raw settings, by shipped name (``seed``, ``paper``, ...) or YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        input_file(path, "recipe file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"recipe file {path} is not UTF-8 text ({error})") from None
        name = path.stem
    else:
        resource = _recipe_dir() / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(f"unknown recipe {str(name_or_path)!r}; shipped recipes: {', '.join(recipe_names())} "
                             "(or give a path to a .yaml file)")
        text = resource.read_text()
        name = str(name_or_path)
    data = read_yaml(text, f"recipe {name_or_path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {name_or_path} must be a YAML mapping of sections")
    data.setdefault("recipe", name)
    return data


def build_config(recipe: str | Path = "seed", overrides: dict[str, Any] | None = None,
                 assignments: list[str] | None = None) -> TrainConfig:
    """Recipe, then ``overrides`` (``{"run.epochs": 5}``), then ``section.key=value`` strings."""
    config = TrainConfig.from_dict(load_recipe(recipe), source=f"recipe {recipe}")
    apply_overrides(config, overrides or {}, assignments or [])
    return config


def config_for_run(recipe: str | Path = "seed", overrides: dict[str, Any] | None = None,
                   assignments: list[str] | None = None, resume: ResumePoint | None = None) -> TrainConfig:
    """The config of a new run (recipe + overrides), or of a resumed one (its saved config +
    overrides; the trainer logs what changed)."""
    if resume is None:
        return build_config(recipe, overrides, assignments)
    config = TrainConfig.from_dict(resume.state["config"], source=f"checkpoint {resume.path}")
    edited = resume.path.parent / RUN_CONFIG
    if edited.is_file():
        config = _edited_run_config(config, edited, resume.path)
    apply_overrides(config, overrides or {}, assignments or [])
    return config


def _edited_run_config(saved: TrainConfig, path: Path, checkpoint: Path) -> TrainConfig:
    """The run folder's ``config.yaml`` where it was edited after ``checkpoint`` was saved:
    its settings are honoured (with a warning naming them), those of :data:`FIXED_ON_RESUME`
    refused by name."""
    edited = read_config(path)
    changes = config_changes(saved.to_dict(), edited.to_dict())
    fixed = [line for line in changes if line.startswith(tuple(f"{key}:" for key in FIXED_ON_RESUME))]
    if fixed:
        raise ConfigError(f"{path} was edited since {checkpoint} was saved and changes the architecture "
                          f"({'; '.join(fixed)}), which a resumed run cannot: undo that edit, or start a new run "
                          f"from these weights with effnet finetune --from {checkpoint}")
    if changes:
        LOG.warning("%s was edited since %s was saved; resuming with its settings: %s", path, checkpoint.name,
                    "; ".join(changes))
    return edited


def config_changes(before: Any, after: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs between two config dicts."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [line for key in dict.fromkeys(list(before) + list(after))
                for line in config_changes(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [f"{prefix[:-1]}: {before!r} -> {after!r}"]


def apply_overrides(config: TrainConfig, overrides: dict[str, Any], assignments: list[str]) -> list[str]:
    """Apply dotted overrides in place and validate; returns the keys whose value changed.

    ``overrides`` entries whose value is ``None`` mean "not given" and are skipped (command-line
    flags left out); ``assignments`` always apply, so ``--set run.amp=null`` clears a setting.
    """
    changed = []
    items = [(k, v) for k, v in overrides.items() if v is not None]
    items += [parse_assignment(text) for text in assignments]
    for key, value in items:
        before = get_value(config, key)
        set_value(config, key, value, "override")
        if get_value(config, key) != before:
            changed.append(key)
    config.validate()
    return changed


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"optimizer.lr=0.01"`` -> ``("optimizer.lr", 0.01)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. optimizer.lr=0.01")
    return key.strip(), read_yaml(raw, f"--set {text!r}") if raw.strip() else None


def read_yaml(text: str, where: str) -> Any:
    """``text`` parsed as YAML; a syntax error becomes a :class:`~effnet.errors.ConfigError` naming ``where`` and
    the line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{where} is not valid YAML{position}: {problem}") from None


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (sections in order)."""
    path = Path(path)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def read_config(path: str | Path) -> TrainConfig:
    """Read a saved ``config.yaml`` back."""
    path = input_file(path, "run config")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text ({error})") from None
    data = read_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a YAML mapping of sections, as effnet wrote it")
    return TrainConfig.from_dict(data, source=str(path))
