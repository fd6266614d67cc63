"""Transfer learning, measured: Lite0 from the real ImageNet weights against the same network
from scratch, fine-tuned on 10 and on 50 demo digits per class.

    python benchmarks/transfer.py [--out runs/transfer-bench] [--epochs N] [--img-size 64]

The training images are a fixed-seed subset of the 4,000 demo training digits (the 10 of a
class are among its 50); 5 other training digits per class watch each epoch. The score is
the top-1 of the final weights (no EMA, no best-epoch choice) on the 1,000 held-out demo
digits, which no run sees before. Both starts use the same recipe (``demo_finetune``, full
fine-tuning, the new classifier started at zero, BatchNorm momentum 0.1 as in the ``demo``
recipe from scratch) and the same number of epochs; the default gives every run about 6,000
training images (60 epochs of 100 images, 12 of 500). With the default momentum (0.01), the
few hundred updates leave a network from scratch with running statistics far from its
activations, and it scores chance on held-out digits while its training loss falls.
``--threads 1`` avoids the slowdown of two compute threads on a CPU that other jobs share.
Wall time covers the whole run with its evaluation and depends on what else runs on the CPU;
the gain column is measured in this run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from effnet.data.demo import write_demo_dataset  # noqa: E402
from effnet.evaluation import evaluate_checkpoint  # noqa: E402
from effnet.table import format_table  # noqa: E402
from effnet.train import train  # noqa: E402
from effnet.train.recipes import build_config  # noqa: E402

MODEL = "efficientnet_lite0"
STARTS = {"ImageNet weights": True, "from scratch": False}
WATCH_PER_CLASS = 5
IMAGES_PER_RUN = 6000
HEADERS = ["start", "images/class", "train images", "epochs", "top-1 %", "wall s", "gain (points)"]


def write_subset(data_dir: Path, per_class: int, seed: int, out_dir: Path) -> Path:
    """``out_dir/train.csv`` with ``per_class`` training digits per class (a fixed-seed draw; smaller
    subsets are nested in larger ones) and ``out_dir/val.csv`` with other digits to watch."""
    rng = np.random.default_rng(seed)
    train_rows, watch_rows = [], []
    for folder in sorted(p for p in (data_dir / "train").iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        order = rng.permutation(len(files))
        if per_class + WATCH_PER_CLASS > len(files):
            raise ValueError(f"{folder} has {len(files)} digits, fewer than {per_class} + {WATCH_PER_CLASS}")
        train_rows += [(files[i].resolve(), folder.name) for i in order[:per_class]]
        watch_rows += [(files[i].resolve(), folder.name) for i in order[-WATCH_PER_CLASS:]]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.csv", train_rows), ("val.csv", watch_rows)):
        with open(out_dir / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label"])
            writer.writerows((str(path), label) for path, label in rows)
    return out_dir


def run_one(subset: Path, pretrained: bool, epochs: int, img_size: int, seed: int, run_dir: Path,
            heldout: Path, assignments: list[str]) -> dict:
    overrides = {"data.path": str(subset), "model.name": MODEL, "model.pretrained": pretrained,
                 "model.zero_init_head": True, "model.overrides.bn_momentum": 0.1, "run.epochs": epochs,
                 "data.img_size": img_size, "run.seed": seed, "ema.enabled": False, "run.progress": False,
                 "run.tensorboard": False}
    config = build_config("demo_finetune", overrides, assignments)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*head was dropped.*")
        result = train(config, run_dir=run_dir)
    final, _, _ = evaluate_checkpoint(run_dir / "last.pt", heldout, batch_size=100, num_workers=0, weights="model")
    return {"top1": final.top1, "heldout_images": final.count, "train_images": result.train_images,
            "epochs": epochs, "wall_s": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/transfer-bench",
                        help="folder for the data, the runs and transfer.json / transfer.md")
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 50], help="training digits per class")
    parser.add_argument("--epochs", type=int, help=f"epochs of every run (default: about {IMAGES_PER_RUN:,} "
                                                   "training images per run)")
    parser.add_argument("--img-size", type=int, default=64, help="training and evaluation size (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="subset draw and training seed")
    parser.add_argument("--threads", type=int, help="torch compute threads (default: torch's choice)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a demo_finetune recipe setting in every run")
    args = parser.parse_args()
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = write_demo_dataset(out / "data")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = []
    for per_class in args.per_class:
        subset = write_subset(data_dir, per_class, args.seed, out / "subsets" / f"{per_class}-per-class")
        epochs = args.epochs or max(1, round(IMAGES_PER_RUN / (10 * per_class)))
        for start, pretrained in STARTS.items():
            run_dir = out / f"{stamp}-{'imagenet' if pretrained else 'scratch'}-{per_class}"
            measured = run_one(subset, pretrained, epochs, args.img_size, args.seed, run_dir, data_dir / "val",
                               args.set)
            results.append({"start": start, "per_class": per_class, "run": str(run_dir), **measured})
    scratch = {r["per_class"]: r["top1"] for r in results if r["start"] == "from scratch"}
    rows = []
    for r in results:
        gain = f"{r['top1'] - scratch[r['per_class']]:+.2f}" if r["start"] != "from scratch" else "-"
        rows.append([r["start"], r["per_class"], r["train_images"], r["epochs"], f"{r['top1']:.2f}",
                     f"{r['wall_s']:.0f}", gain])
    title = (f"{MODEL} fine-tuned on demo digits at {args.img_size} px, top-1 of the final weights on the "
             f"{results[0]['heldout_images']:,} held-out digits")
    print(title)
    print(format_table(HEADERS, rows))
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.json").write_text(json.dumps({"model": MODEL, "img_size": args.img_size, "seed": args.seed,
                                                   "results": results}, indent=2))
    markdown = [f"{title}\n", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    markdown += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    (out / "transfer.md").write_text("\n".join(markdown) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
