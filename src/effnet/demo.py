"""The demo: the built-in MNIST digits, a short training run on the CPU, and its result table.

``demo`` trains B0 from scratch; ``demo_finetune`` fine-tunes ImageNet weights (Lite0 by
default in the benchmark). Both recipes keep digits unflipped and train at a small size
so that the whole job takes a few minutes on two CPU cores.

The kept epoch is chosen on a validation part of the 4,000 training digits
(:data:`DEMO_VAL_SPLIT`); the 1,000 held-out digits are evaluated once, at the end, so
the top-1 the demo reports was not used to pick anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .data.demo import write_demo_dataset
from .evaluation import evaluate_checkpoint
from .train.config import build_config
from .train.metrics import EvalResult
from .train.reporting import TrainResult, mistakes_row, save_evaluation
from .train.trainer import train

DEMO_ROOT = Path("runs") / "demo"
DEMO_VAL_SPLIT = 0.1
"""The part of each digit's training images that picks the kept epoch (400 of 4,000)."""
HELD_OUT_DIR = "held_out"
"""Where in the run the held-out evaluation (confusion matrix, mistakes) is written."""


@dataclass
class DemoResult:
    """A finished demo run and what it was."""

    model: str
    pretrained: bool
    data_dir: Path
    img_size: int
    train: TrainResult
    held_out: EvalResult | None
    """The kept weights on the 1,000 held-out digits (``None`` if the run did not finish)."""


def run_demo(out_dir: str | Path = DEMO_ROOT, model: str = "efficientnet_b0", pretrained: bool = False,
             overrides: dict[str, Any] | None = None, assignments: list[str] | None = None) -> DemoResult:
    """Write the demo digits under ``out_dir/data``, train with the demo recipe on the 4,000
    training digits (keeping the best epoch on :data:`DEMO_VAL_SPLIT` of them), then evaluate
    the kept weights once on the 1,000 held-out digits. ``overrides``/``assignments`` change
    recipe settings as in ``train``."""
    out_dir = Path(out_dir)
    data_dir = write_demo_dataset(out_dir / "data")
    recipe = "demo_finetune" if pretrained else "demo"
    settings = {"data.path": str(data_dir / "train"), "data.val_split": DEMO_VAL_SPLIT, "model.name": model,
                "model.pretrained": True if pretrained else None}
    config = build_config(recipe, {**settings, **(overrides or {})}, assignments)
    tag = "finetune" if pretrained else "scratch"
    run_dir = out_dir / f"{model}-{tag}-{datetime.now():%Y%m%d-%H%M%S}"
    result = train(config, run_dir=run_dir)
    held_out = None
    if result.status == "completed" and result.is_main:
        held_out, class_names, _ = evaluate_checkpoint(run_dir, data_dir / "val", num_workers=config.data.num_workers,
                                                       device=config.run.device)
        save_evaluation(held_out, class_names, run_dir / HELD_OUT_DIR, f"{model}: the 1,000 held-out digits")
    return DemoResult(model, pretrained, data_dir, config.data.img_size, result, held_out)


def demo_rows(demo: DemoResult) -> list[list[object]]:
    """The result table: what was trained, how well and how fast."""
    result = demo.train
    rows: list[list[object]] = [
        ["model", demo.model], ["start", "ImageNet weights" if demo.pretrained else "from scratch"],
        ["data", f"{demo.data_dir} ({result.train_images:,} train digits)"],
        ["epochs", f"{result.epochs_completed}/{result.epochs}"], ["image size", demo.img_size],
    ]
    if result.final is not None:
        rows += [["kept epoch", f"{result.best_epoch} ({result.best_weights} weights, "
                                f"{result.final.top1:.2f}% on {result.final.count} validation digits)"]]
    if demo.held_out is not None:
        rows += [["held-out digits", demo.held_out.count], ["top-1 %", f"{demo.held_out.top1:.2f}"],
                 ["top-5 %", f"{demo.held_out.top5:.2f}"], mistakes_row(demo.held_out, result.run_dir / HELD_OUT_DIR)]
    throughput = result.train_images_per_s
    rows += [["wall time", f"{result.wall_time_s:.0f} s"],
             ["train img/s", f"{throughput:.1f}" if throughput is not None else "-"],
             ["run", str(result.run_dir)]]
    return rows
