"""``effnet eval``: top-1, top-5, per-class accuracy and the confusion matrix of a checkpoint."""

from __future__ import annotations

import argparse

from ..data.device_decode import DECODE_MODES
from ..evaluation import evaluate_checkpoint
from ..files import check_output_folder
from ..table import format_table
from ..train.metrics import confusion_rows, mistake_rows, per_class_rows, summary_rows
from ..train.reporting import save_evaluation
from . import add_command, add_follow_links, numbers

CONFUSION_PRINT_LIMIT = 20
MISTAKES_PRINTED = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "eval",
        description="Evaluate a run's .pt, an effnet .safetensors or a run directory on DATA: its val/ "
                    "folder (or val.csv), the --val-split held out in training, or every image of a folder of "
                    "class folders or a path,label CSV. Classes are matched to the model's by name.")
    parser.add_argument("--checkpoint", required=True, help="last.pt / best.pt, model.safetensors or a run dir")
    parser.add_argument("--data", required=True, help="class folders, train/ + val/, or a path,label CSV")
    parser.add_argument("--weights", choices=("auto", "model", "ema"), default="auto",
                        help="for .pt checkpoints: raw or EMA weights (auto: the better one on validation)")
    parser.add_argument("--val-split", type=numbers.FRACTION,
                        help="evaluate the fraction held out in training (no val/)")
    parser.add_argument("--seed", type=numbers.SEED, default=0, help="the training run's seed, for --val-split")
    parser.add_argument("--batch-size", type=numbers.BATCH, default=64)
    parser.add_argument("--workers", type=numbers.WORKERS, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--decode", choices=DECODE_MODES, default="auto",
                        help="where JPEGs are decoded: cpu (loader workers) or gpu (the device, in batches; "
                             "not yet measured on a GPU); auto: cpu until it is")
    parser.add_argument("--out", help="also write confusion_matrix.png/.csv, per_class.csv and mistakes.csv/.png here")
    add_follow_links(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_output_folder(args.out) if args.out else None
    result, class_names, _ = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size,
                                                 num_workers=args.workers, weights=args.weights, device=args.device,
                                                 val_split=args.val_split, seed=args.seed, decode=args.decode,
                                                 follow_links=bool(args.follow_links))
    print(format_table(["metric", "value"], summary_rows(result)))
    print()
    print(format_table(["class", "images", "accuracy %"], per_class_rows(result, class_names)))
    if len(class_names) <= CONFUSION_PRINT_LIMIT:
        print()
        print("confusion matrix (rows: true class, columns: predicted)")
        print(format_table(["true \\ predicted", *class_names], confusion_rows(result, class_names)))
    if result.mistakes:
        shown = min(len(result.mistakes), MISTAKES_PRINTED)
        print()
        print(f"{len(result.mistakes)} misclassified image(s); the {shown} most confident"
              + ("" if args.out else " (--out writes them all to mistakes.csv and mistakes.png)"))
        print(format_table(["file", "true", "predicted", "confidence %"], mistake_rows(result.mistakes, shown)))
    if args.out:
        for path in save_evaluation(result, class_names, out, title=str(args.checkpoint)):
            print(f"wrote {path}")
    return 0
