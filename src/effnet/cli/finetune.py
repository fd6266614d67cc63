"""``effnet finetune``: adapt a pretrained model (or one of ours) to the classes of an image folder."""

from __future__ import annotations

import argparse

from ..train.finetune import STRATEGIES, start_settings
from ..train.recipes import build_config
from . import add_command, numbers
from .train import add_run_arguments, run_overrides, train_and_report


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "finetune",
        description="Give a pretrained model (or one of our trained models) a new head for the classes of --data "
                    "and train it with the finetune recipe; flags and --set override the recipe. The run is "
                    "resumable with `effnet train --resume RUN_DIR`.")
    parser.add_argument("--from", dest="source", required=True, metavar="MODEL_OR_CHECKPOINT",
                        help="a model name with its default pretrained weights (e.g. efficientnet_lite0), NAME:TAG "
                             "for other published weights, or a run directory / .pt / .safetensors of ours")
    parser.add_argument("--data", required=True, help="class folders, train/ + val/, or a path,label CSV")
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="linear: classifier only; full: everything; gradual: unfreeze a stage at a time "
                             "from the top (default: the recipe's, full)")
    parser.add_argument("--epochs-per-group", type=numbers.EPOCHS,
                        help="gradual: epochs before the next group unfreezes")
    parser.add_argument("--layer-decay", type=numbers.real(0.0, 1.0, low_open=True),
                        help="learning rate x this per layer group below the classifier (1: the same for all)")
    add_run_arguments(parser, recipe="finetune",
                      img_size_help="training and evaluation image size (default: the model's)",
                      lr_help="learning rate of the classifier (the top layer group)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = {
        **run_overrides(args), "data.path": args.data, **start_settings(args.source),
        "finetune.strategy": args.strategy, "finetune.epochs_per_group": args.epochs_per_group,
        "finetune.layer_decay": args.layer_decay,
    }
    return train_and_report(build_config(args.recipe, overrides, args.set), args)
