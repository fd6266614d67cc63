"""``effnet train``: train (or resume) a run from an image folder with a recipe."""

from __future__ import annotations

import argparse
from typing import Any

from ..device import AMP_DTYPES
from ..files import check_output_folder
from ..table import format_table
from ..train.checkpoint import ResumePoint
from ..train.config import OPTIMIZERS, TrainConfig
from ..train.recipes import config_for_run, recipe_names
from ..train.reporting import result_rows
from ..train.trainer import train
from . import add_command, add_follow_links, numbers


def add_run_arguments(parser: argparse.ArgumentParser, *, recipe: str, img_size_help: str, lr_help: str) -> None:
    """The flags ``train`` and ``finetune`` share (read back by :func:`run_overrides`)."""
    parser.add_argument("--recipe", default=recipe,
                        help=f"shipped recipe ({', '.join(recipe_names())}) or a YAML file (default: {recipe})")
    parser.add_argument("--epochs", type=numbers.EPOCHS)
    parser.add_argument("--img-size", type=numbers.IMAGE_SIZE, help=img_size_help)
    parser.add_argument("--batch-size", type=numbers.BATCH, help="images per process and step")
    parser.add_argument("--lr", type=numbers.LEARNING_RATE, help=lr_help)
    parser.add_argument("--workers", type=numbers.WORKERS, help="DataLoader worker processes")
    parser.add_argument("--val-split", type=numbers.FRACTION,
                        help="hold out this fraction when there is no val/ folder")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    parser.add_argument("--seed", type=numbers.SEED)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any recipe setting, e.g. --set optimizer.weight_decay=0 (repeatable)")
    parser.add_argument("--out", help="run directory (default: runs/<model>-<time>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace another run's files in --out (a new run refuses such a folder otherwise)")
    parser.add_argument("--allow-single-class", action="store_true", default=None,
                        help="train on data with a single class (refused otherwise: it scores 100%% learning nothing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    add_follow_links(parser)


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe settings given by :func:`add_run_arguments`' flags (None: keep the recipe's)."""
    return {
        "run.epochs": args.epochs, "data.img_size": args.img_size, "data.batch_size": args.batch_size,
        "optimizer.lr": args.lr, "data.num_workers": args.workers, "data.val_split": args.val_split,
        "run.device": args.device, "run.seed": args.seed, "run.progress": False if args.no_progress else None,
        "data.allow_single_class": args.allow_single_class, "data.follow_links": args.follow_links,
    }


def train_and_report(config: TrainConfig, args: argparse.Namespace, resume: ResumePoint | None = None) -> int:
    """Train, print the result table on the main process; exit code 130 when interrupted."""
    if args.out:
        check_output_folder(args.out)
    result = train(config, run_dir=args.out, resume=resume, overwrite=args.overwrite)
    if result.is_main:
        print(format_table(["", ""], result_rows(result)))
    return 130 if result.status == "interrupted" else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "train",
        description="Train from an image folder with a recipe; flags and --set override the recipe. "
                    "Under `torchrun --nproc-per-node N` the same command runs DDP.")
    parser.add_argument("--data", help="class folders, train/ + val/, or a path,label CSV")
    parser.add_argument("--model", help="model name, e.g. efficientnet_b0 (see `effnet models`)")
    add_run_arguments(parser, recipe="seed", img_size_help="final training image size (default: the variant's)",
                      lr_help="learning rate (per optimizer.lr_base_batch images if set)")
    parser.add_argument("--eval-img-size", type=numbers.IMAGE_SIZE, help="evaluation image size (default: --img-size)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS)
    parser.add_argument("--pretrained", nargs="?", const=True, default=None,
                        help="start from pretrained weights (optionally a tag or file) for fine-tuning")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), help="mixed precision (fp16 needs CUDA)")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    parser.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm in DDP runs (CUDA)")
    parser.add_argument("--strict", action="store_true", default=None, help="unreadable image files are an error")
    parser.add_argument("--resume", metavar="RUN_DIR_OR_CKPT", help="continue a run from its last.pt")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = {
        **run_overrides(args), "data.path": args.data, "model.name": args.model,
        "data.eval_img_size": args.eval_img_size, "optimizer.name": args.optimizer,
        "model.pretrained": args.pretrained, "run.amp": args.amp, "run.compile": args.compile,
        "run.sync_bn": args.sync_bn, "data.strict": args.strict,
    }
    resume = ResumePoint.load(args.resume) if args.resume else None
    config = config_for_run(args.recipe, overrides, args.set, resume=resume)
    return train_and_report(config, args, resume=resume)
