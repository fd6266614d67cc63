"""Training: recipes, the loop (single process or DDP), checkpoints, metrics and the demo."""

from .checkpoint import load_checkpoint, load_trained_model
from .config import TrainConfig, build_config, load_recipe, read_config, recipe_names
from .ema import ModelEMA
from .metrics import EvalResult, evaluate
from .optim import RMSpropTF, build_optimizer, param_groups
from .progressive import EpochSettings, ProgressivePlan
from .schedule import LRSchedule
from .trainer import Trainer, TrainingDiverged, TrainResult, config_for_run, evaluate_checkpoint, train

__all__ = [
    "EpochSettings",
    "EvalResult",
    "LRSchedule",
    "ModelEMA",
    "ProgressivePlan",
    "RMSpropTF",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "build_config",
    "build_optimizer",
    "config_for_run",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_recipe",
    "load_trained_model",
    "param_groups",
    "read_config",
    "recipe_names",
    "train",
]
