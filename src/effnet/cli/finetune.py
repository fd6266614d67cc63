"""``effnet finetune``: adapt a pretrained model (or one of ours) to the classes of an image folder."""

from __future__ import annotations

import argparse

from ..finetune import STRATEGIES, start_settings
from ..table import format_table
from ..train.config import build_config, recipe_names
from ..train.trainer import result_rows, train


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a pretrained model or a trained run on an image folder",
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
    parser.add_argument("--epochs-per-group", type=int, help="gradual: epochs before the next group unfreezes")
    parser.add_argument("--layer-decay", type=float,
                        help="learning rate x this per layer group below the classifier (1: the same for all)")
    parser.add_argument("--recipe", default="finetune",
                        help=f"shipped recipe ({', '.join(recipe_names())}) or a YAML file (default: finetune)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--img-size", type=int, help="training and evaluation image size (default: the model's)")
    parser.add_argument("--batch-size", type=int, help="images per process and step")
    parser.add_argument("--lr", type=float, help="learning rate of the classifier (the top layer group)")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes")
    parser.add_argument("--val-split", type=float, help="hold out this fraction when there is no val/ folder")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any recipe setting, e.g. --set optimizer.weight_decay=0 (repeatable)")
    parser.add_argument("--out", help="run directory (default: runs/<model>-<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = {
        "data.path": args.data, **start_settings(args.source), "finetune.strategy": args.strategy,
        "finetune.epochs_per_group": args.epochs_per_group, "finetune.layer_decay": args.layer_decay,
        "run.epochs": args.epochs, "data.img_size": args.img_size, "data.batch_size": args.batch_size,
        "optimizer.lr": args.lr, "data.num_workers": args.workers, "data.val_split": args.val_split,
        "run.device": args.device, "run.seed": args.seed, "run.progress": False if args.no_progress else None,
    }
    config = build_config(args.recipe, overrides, args.set)
    result = train(config, run_dir=args.out)
    if result.is_main:
        print(format_table(["", ""], result_rows(result)))
    return 130 if result.status == "interrupted" else 0
