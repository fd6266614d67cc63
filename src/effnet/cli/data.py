"""``effnet data demo DIR``: write the built-in demo dataset; ``effnet data info DATA``: what a data path holds."""

from __future__ import annotations

import argparse

from ..data.datasets import build_datasets
from ..data.demo import write_demo_dataset
from ..table import format_table
from . import add_command, add_follow_links, numbers


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "data")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    demo = commands.add_parser("demo", help="write 5,000 MNIST digits as PNG class folders (4,000 train, 1,000 val)")
    demo.add_argument("dir", help="output folder (train/ and val/ are created in it)")
    demo.add_argument("--force", action="store_true", help="rewrite train/ and val/ if they hold something else")
    demo.set_defaults(func=run_demo)

    info = commands.add_parser("info", help="classes, image counts and unusable files of a data path")
    info.add_argument("data", help="folder (train/ and val/, or class folders) or CSV listing")
    info.add_argument("--val-split", type=numbers.FRACTION, default=None,
                      help="fraction held out when there is no val set")
    info.add_argument("--seed", type=numbers.SEED, default=0, help="seed of the val split (default 0)")
    info.add_argument("--full-check", action="store_true", help="decode every image (slower, catches truncated JPEGs)")
    info.add_argument("--strict", action="store_true", help="fail on the first unusable file")
    add_follow_links(info)
    info.set_defaults(func=run_info)


def run_demo(args: argparse.Namespace) -> int:
    out_dir = write_demo_dataset(args.dir, force=args.force)
    splits = build_datasets(out_dir, validate="none")
    print(f"demo dataset in {out_dir}: {len(splits.train):,} train and {len(splits.val):,} val PNG images, "
          f"classes {', '.join(splits.classes)}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    splits = build_datasets(args.data, val_split=args.val_split, seed=args.seed, strict=args.strict,
                            validate="full" if args.full_check else "header", follow_links=bool(args.follow_links))
    train_counts, val_counts = splits.train.class_counts(), splits.val.class_counts()
    rows = [[name, train, val] for name, train, val in zip(splits.classes, train_counts, val_counts, strict=True)]
    rows.append(["total", sum(train_counts), sum(val_counts)])
    print(format_table(["class", "train", "val"], rows))
    skipped = splits.skipped
    print(f"{len(skipped)} unusable file(s) skipped")
    for path, reason in skipped:
        print(f"  {path}: {reason}")
    return 0
