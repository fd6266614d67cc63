"""What a run shows and leaves behind: its log lines, progress bars, metrics CSV, TensorBoard, PNG plots."""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..data.images import ImageReadError, load_image
from ..files import atomic_write, printable_path
from ..weights.trained import LAST, MODEL
from .config import TrainConfig
from .distributed import DistContext
from .metrics import EvalResult, Mistake, confusion_entries
from .state import RunState


@dataclass
class TrainResult:
    """How a run ended and where its outputs are."""

    run_dir: Path
    status: str  # "completed", "stopped" (stop_after reached) or "interrupted" (signal)
    epochs_completed: int
    epochs: int
    best_top1: float | None
    best_epoch: int | None
    best_weights: str | None
    class_names: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    final: EvalResult | None = None
    wall_time_s: float = 0.0
    train_images: int = 0
    is_main: bool = True

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / LAST

    @property
    def train_images_per_s(self) -> float | None:
        """Training throughput over all epochs (images per second of training time)."""
        seconds = sum(row["epoch_time_s"] for row in self.history)
        images = sum(row["train_img_per_s"] * row["epoch_time_s"] for row in self.history)
        return images / seconds if seconds else None


LOG = logging.getLogger("effnet.train")
MISTAKES_SHOWN = 48
"""How many misclassified images ``mistakes.png`` shows (the most confident; the CSV lists all)."""
THUMBNAIL_SIZE = 128


def setup_logging(run_dir: Path | None, enabled: bool) -> logging.Handler | None:
    """Log to stderr and ``run_dir/train.log`` (on rank 0 only); returns the file handler to close."""
    if not enabled:
        LOG.setLevel(logging.WARNING)
        return None
    LOG.setLevel(logging.INFO)
    if not any(getattr(h, "_effnet_console", False) for h in LOG.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        console._effnet_console = True  # type: ignore[attr-defined]
        LOG.addHandler(console)
    if run_dir is None:
        return None
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    return handler


def close_logging(handler: logging.Handler | None) -> None:
    if handler is not None:
        LOG.removeHandler(handler)
        handler.close()


def progress_bar(total: int, description: str, enabled: bool) -> tqdm:
    """A tqdm bar (images/s, loss and lr go in its postfix; tqdm adds the ETA). Shown on a
    terminal only: piped to a file, the per-epoch log lines tell the progress."""
    return tqdm(total=total, desc=description, unit="batch", disable=None if enabled else True, leave=False,
                dynamic_ncols=True, file=sys.stderr)


def log_run_start(run_dir: Path, config: TrainConfig, parameters: int, classes: int, images: tuple[int, int],
                  context: DistContext, base_lr: float, sizes: Sequence[int]) -> None:
    """What a run is about to do: ``parameters`` of the model, ``classes``, (training,
    validation) ``images``, the learning rate after scaling, and the training image ``sizes``
    of its epochs."""
    sizes = sorted(set(sizes))
    size_text = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}..{sizes[-1]} ({config.progressive.mode})"
    LOG.info("run %s: %s (%s params), %d classes, %d train / %d val images, recipe %s",
             run_dir, config.model.name, f"{parameters:,}", classes, images[0], images[1], config.recipe)
    LOG.info("device %s x %d process(es), batch %d x %d accumulation, lr %.4g (%s, %s schedule), "
             "image size %s -> eval %d, amp %s", context.device, context.world_size,
             config.data.batch_size, config.run.accum_steps, base_lr, config.optimizer.name,
             config.schedule.name, size_text, config.data.eval_img_size, config.run.amp or "off")
    if config.model.pretrained:
        LOG.info("starting from pretrained weights: %s", config.model.pretrained)
    tuning = config.finetune
    if tuning.active:
        LOG.info("fine-tuning: %s strategy%s, layer decay %g", tuning.strategy,
                 f" (one more layer group every {tuning.epochs_per_group} epoch(s))"
                 if tuning.strategy == "gradual" else "", tuning.layer_decay)


def log_resume(checkpoint: Path, run: RunState, changes: Sequence[str]) -> None:
    """Where a resumed run continues, and the ``changes`` of its settings (see
    :func:`~effnet.train.recipes.config_changes`)."""
    where = f"epoch {run.epoch + 1}" + (f", batch {run.step_in_epoch + 1}" if run.mid_epoch else "")
    LOG.info("resuming %s from %s", checkpoint, where)
    if changes:
        LOG.warning("resuming with changed settings (the run will not match an uninterrupted one): %s",
                    "; ".join(changes))


def log_epoch(row: dict[str, Any], epochs: int, best: bool) -> None:
    """One line for a finished epoch's ``row`` of the history (``best``: marked as the new best)."""
    ema_text = f", EMA {row['ema_val_top1']:.2f}%" if "ema_val_top1" in row else ""
    LOG.info("epoch %d/%d @%dpx: train loss %.4f, val loss %.4f, top-1 %.2f%%%s, top-5 %.2f%%, "
             "%.1f img/s, %.0fs%s", row["epoch"], epochs, row["img_size"], row["train_loss"],
             row["val_loss"], row["val_top1"], ema_text, row["val_top5"], row["train_img_per_s"],
             row["epoch_time_s"], " (best)" if best else "")


def write_metrics_csv(history: Sequence[dict[str, Any]], path: Path) -> None:
    """The whole per-epoch history as CSV (rewritten atomically each epoch)."""
    if not history:
        return
    columns = list(dict.fromkeys(key for row in history for key in row))
    write_csv(path, columns, ([_csv_value(row.get(k)) for k in columns] for row in history))


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV file written atomically with the csv module (values holding commas, quotes or
    line breaks are quoted; paths that are not valid UTF-8 are escaped)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write(path, lambda temp: temp.write_text(buffer.getvalue(), encoding="utf-8"))


def _csv_value(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


class TensorBoardLog:
    """Per-epoch scalars under ``run_dir/tensorboard`` (events after a resume point are purged)."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and value is not None:
                group = "val" if key.startswith(("val_", "ema_")) else "train"
                self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def plot_curves(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Loss and top-1 per epoch, train and validation (raw and EMA weights)."""
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, acc_axes = figure.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "val"), ("ema_val_loss", "val (EMA)")):
        _line(loss_axes, history, epochs, key, label)
    for key, label in (("val_top1", "val"), ("ema_val_top1", "val (EMA)")):
        _line(acc_axes, history, epochs, key, label)
    loss_axes.set(title="loss", xlabel="epoch")
    acc_axes.set(title="top-1 accuracy (%)", xlabel="epoch")
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=100))


def _line(axes: Any, history: Sequence[dict[str, Any]], epochs: list[int], key: str, label: str) -> None:
    values = [row.get(key) for row in history]
    if any(v is not None for v in values):
        axes.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", label=label)


def plot_confusion(confusion: torch.Tensor, class_names: Sequence[str], path: Path, title: str = "") -> None:
    """The confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    from matplotlib.figure import Figure

    n = len(class_names)
    size = min(4 + 0.45 * n, 24)
    figure = Figure(figsize=(size, size * 0.9), layout="constrained")
    axes = figure.subplots()
    matrix = confusion.numpy()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    if n <= 40:
        axes.set_xticks(range(n), labels=list(class_names), rotation=90 if n > 10 else 0)
        axes.set_yticks(range(n), labels=list(class_names))
    if n <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                          color="white" if matrix[i, j] > threshold else "black")
    axes.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=100))


def save_evaluation(result: EvalResult, class_names: Sequence[str], out_dir: Path, title: str = "") -> list[Path]:
    """``confusion_matrix.png``, ``confusion_matrix.csv``, ``per_class.csv`` and the
    misclassified images (``result.mistakes``): ``mistakes.csv`` and, if any, ``mistakes.png``.

    Beyond :data:`~effnet.train.metrics.DENSE_CONFUSION_CLASSES` classes (a sparse matrix) the
    files grow with the images, not the classes: ``confusion_pairs.csv`` (``true,predicted,images``
    for each pair that occurred) instead of the matrix and its picture, and ``per_class.csv``
    for the classes with images."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if result.confusion.is_sparse:
        true, predicted, counts = confusion_entries(result.confusion)
        written.append(write_csv(out_dir / "confusion_pairs.csv", ["true", "predicted", "images"],
                                 ([class_names[t], class_names[p], c] for t, p, c in
                                  zip(true.tolist(), predicted.tolist(), counts.tolist(), strict=True))))
    else:
        png, matrix_csv = out_dir / "confusion_matrix.png", out_dir / "confusion_matrix.csv"
        heading = f"{title}: top-1 {result.top1:.2f}%" if title else f"top-1 {result.top1:.2f}%"
        plot_confusion(result.confusion, class_names, png, heading)
        matrix = zip(class_names, result.confusion.tolist(), strict=True)
        write_csv(matrix_csv, ["true\\predicted", *class_names], ([name, *map(int, row)] for name, row in matrix))
        written += [png, matrix_csv]
    per_class_csv = out_dir / "per_class.csv"
    per_class = zip(class_names, result.per_class_count, result.per_class_accuracy, strict=True)
    write_csv(per_class_csv, ["class", "images", "accuracy"],
              ([name, n, f"{acc:.4f}"] for name, n, acc in per_class if n or not result.confusion.is_sparse))
    return [*written, per_class_csv, *save_mistakes(result.mistakes, out_dir)]


def save_mistakes(mistakes: Sequence[Mistake], out_dir: Path) -> list[Path]:
    """``mistakes.csv`` (path, true class, predicted class, confidence; all of them) and
    ``mistakes.png`` (the :data:`MISTAKES_SHOWN` most confident), or no PNG when there are none."""
    table, sheet = out_dir / "mistakes.csv", out_dir / "mistakes.png"
    write_csv(table, ["path", "true_class", "predicted_class", "confidence"],
              ([printable_path(m.path), m.true_class, m.predicted_class, f"{m.confidence:.4f}"] for m in mistakes))
    if not mistakes:
        sheet.unlink(missing_ok=True)  # an earlier evaluation's sheet would mislead
        return [table]
    plot_mistakes(mistakes[:MISTAKES_SHOWN], sheet)
    return [table, sheet]


def plot_mistakes(mistakes: Sequence[Mistake], path: Path, columns: int = 8) -> None:
    """The misclassified images in a grid, each titled with its file name, ``true -> predicted`` and
    the confidence. Images that can no longer be read are drawn blank."""
    from matplotlib.figure import Figure

    rows = math.ceil(len(mistakes) / columns)
    figure = Figure(figsize=(1.6 * columns, 1.9 * rows), layout="constrained")
    for axes, mistake in zip(figure.subplots(rows, columns, squeeze=False).flat, mistakes, strict=False):
        try:
            image = load_image(mistake.path)
        except ImageReadError:
            pass
        else:
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            axes.imshow(image)
        axes.set_title(f"{printable_path(mistake.path.name)}\n"
                       f"{mistake.true_class[:12]} -> {mistake.predicted_class[:12]}\n"
                       f"{mistake.confidence:.0%}", fontsize=7)
    for axes in figure.axes:
        axes.set_axis_off()
    atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=100))


def mistakes_row(final: EvalResult, run_dir: Path) -> list[object]:
    """A table row: how many validation images the kept weights misclassify, and where they are shown."""
    count = len(final.mistakes)
    return ["misclassified", f"{count} (see {run_dir / 'mistakes.png'})" if count else "0"]


def result_rows(result: TrainResult) -> list[list[object]]:
    """(label, value) rows summing up a run, for a printed table."""
    rows: list[list[object]] = [["status", result.status], ["run", str(result.run_dir)],
                                ["epochs", f"{result.epochs_completed}/{result.epochs}"]]
    if result.best_top1 is not None:
        rows.append(["best epoch", f"{result.best_epoch} ({result.best_weights} weights)"])
    if result.final is not None:
        rows += [["val images", result.final.count], ["val top-1 %", f"{result.final.top1:.2f}"],
                 ["val top-5 %", f"{result.final.top5:.2f}"], ["val loss", f"{result.final.loss:.4f}"],
                 mistakes_row(result.final, result.run_dir)]
    elif result.best_top1 is not None:
        rows.append(["val top-1 %", f"{result.best_top1:.2f}"])
    rows.append(["wall time", f"{result.wall_time_s:.0f} s"])
    if result.train_images_per_s is not None:
        rows.append(["train img/s", f"{result.train_images_per_s:.1f}"])
    if result.status == "completed":
        rows.append(["model", str(result.run_dir / MODEL)])
    else:
        rows.append(["resume with", f"effnet train --resume {result.run_dir}"])
    return rows
