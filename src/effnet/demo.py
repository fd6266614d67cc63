"""The demo: the built-in MNIST digits, a short training run on the CPU, and its result table.

``demo`` trains B0 from scratch; ``demo_finetune`` fine-tunes ImageNet weights (Lite0 by
default in the benchmark). Both recipes keep digits unflipped and train at a small size
so that the whole job takes a few minutes on two CPU cores.

The run trains on the 4,000 training digits and keeps its final weights (``run.keep=last``:
the last epoch's EMA weights), so nothing is chosen on the 1,000 held-out digits; their top-1
after each epoch is only shown, and the reported top-1 is the kept weights' on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .data.demo import write_demo_dataset
from .train.recipes import build_config
from .train.reporting import TrainResult, mistakes_row
from .train.trainer import train

DEMO_ROOT = Path("runs") / "demo"


@dataclass
class DemoResult:
    """A finished demo run and what it was."""

    model: str
    pretrained: bool
    data_dir: Path
    img_size: int
    train: TrainResult


def run_demo(out_dir: str | Path = DEMO_ROOT, model: str = "efficientnet_b0", pretrained: bool = False,
             overrides: dict[str, Any] | None = None, assignments: list[str] | None = None) -> DemoResult:
    """Write the demo digits under ``out_dir/data``, train with the demo recipe on the 4,000
    training digits, keep the final weights and evaluate them on the 1,000 held-out digits.
    ``overrides``/``assignments`` change recipe settings as in ``train``."""
    out_dir = Path(out_dir)
    data_dir = write_demo_dataset(out_dir / "data")
    recipe = "demo_finetune" if pretrained else "demo"
    settings = {"data.path": str(data_dir), "model.name": model, "model.pretrained": True if pretrained else None}
    config = build_config(recipe, {**settings, **(overrides or {})}, assignments)
    tag = "finetune" if pretrained else "scratch"
    run_dir = out_dir / f"{model}-{tag}-{datetime.now():%Y%m%d-%H%M%S}"
    result = train(config, run_dir=run_dir)
    return DemoResult(model, pretrained, data_dir, config.data.img_size, result)


def demo_rows(demo: DemoResult) -> list[list[object]]:
    """The result table: what was trained, how well and how fast."""
    result = demo.train
    rows: list[list[object]] = [
        ["model", demo.model], ["start", "ImageNet weights" if demo.pretrained else "from scratch"],
        ["data", f"{demo.data_dir} ({result.train_images:,} train digits)"],
        ["epochs", f"{result.epochs_completed}/{result.epochs}"], ["image size", demo.img_size],
    ]
    if result.final is not None:
        rows += [["kept", f"epoch {result.best_epoch}, {result.best_weights} weights (the last: nothing chosen on "
                          "the held-out digits)"],
                 ["held-out digits", result.final.count], ["top-1 %", f"{result.final.top1:.2f}"],
                 ["top-5 %", f"{result.final.top5:.2f}"], mistakes_row(result.final, result.run_dir)]
    throughput = result.train_images_per_s
    rows += [["wall time", f"{result.wall_time_s:.0f} s"],
             ["train img/s", f"{throughput:.1f}" if throughput is not None else "-"],
             ["run", str(result.run_dir)]]
    return rows
