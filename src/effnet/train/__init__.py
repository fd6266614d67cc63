"""Training: recipes, the loop (single process or DDP), checkpoints, metrics and the demo."""

from .config import TrainConfig
from .divergence import TrainingDiverged
from .ema import ModelEMA
from .metrics import EvalResult, evaluate
from .optim import RMSpropTF, build_optimizer, weight_decay_groups
from .progressive import EpochSettings, ProgressivePlan
from .recipes import build_config, config_for_run, load_recipe, read_config, recipe_names
from .reporting import TrainResult
from .schedule import LRSchedule
from .trainer import Trainer, train

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
    "load_recipe",
    "read_config",
    "recipe_names",
    "train",
    "weight_decay_groups",
]
