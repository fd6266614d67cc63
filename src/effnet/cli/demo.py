"""``effnet demo``: write the demo digits, train, evaluate and print the result table."""

from __future__ import annotations

import argparse

from ..demo import DEMO_ROOT, demo_rows, run_demo
from ..table import format_table
from ..train.metrics import per_class_rows
from . import add_command, numbers


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "demo",
        description="Write 5,000 MNIST digits as PNG folders, train on 4,000 with the demo recipe, keep the "
                    "final weights and evaluate them on the 1,000 held out.")
    parser.add_argument("--out", default=str(DEMO_ROOT), help=f"folder for the data and runs (default {DEMO_ROOT})")
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--pretrained", action="store_true",
                        help="fine-tune ImageNet weights (recipe demo_finetune) instead of training from scratch")
    parser.add_argument("--epochs", type=numbers.EPOCHS)
    parser.add_argument("--img-size", type=numbers.IMAGE_SIZE)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe setting, e.g. --set optimizer.lr=0.003")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    demo = run_demo(args.out, model=args.model, pretrained=args.pretrained,
                    overrides={"run.epochs": args.epochs, "data.img_size": args.img_size}, assignments=args.set)
    result = demo.train
    if result.final is not None:
        print(format_table(["digit", "images", "accuracy %"], per_class_rows(result.final, result.class_names)))
        print()
    print(format_table(["", ""], demo_rows(demo)))
    return 0 if result.status == "completed" else 130
