"""Classification metrics: top-1/top-5, loss, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistContext, all_reduce_sum


@dataclass
class EvalResult:
    """Metrics over a dataset; accuracies in percent. ``confusion[true, predicted]`` counts."""

    loss: float
    top1: float
    top5: float
    count: int
    confusion: torch.Tensor

    @property
    def per_class_accuracy(self) -> list[float]:
        """Percent correct per true class (NaN for a class with no images)."""
        totals = self.confusion.sum(dim=1).double()
        correct = self.confusion.diagonal().double()
        return (100.0 * correct / totals).tolist()

    @property
    def per_class_count(self) -> list[int]:
        return self.confusion.sum(dim=1).tolist()


def autocast_context(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``bf16``/``fp16``, or nothing for full precision."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, num_classes: int, device: torch.device,
             amp: str | None = None, channels_last: bool = False,
             context: DistContext | None = None, target_map: list[int] | None = None) -> EvalResult:
    """Run ``model`` in eval mode over ``(images, targets)`` batches and gather the metrics.

    In a distributed run each process passes its own shard and the sums are combined, so
    every image counts exactly once. ``target_map`` translates dataset class indices to the
    model's (when the data lists the classes in another order, or only some of them).
    """
    mapping = torch.tensor(target_map, device=device) if target_map is not None else None
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1, top-k
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    try:
        for images, targets in batches:
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
            if mapping is not None:
                targets = mapping[targets]
            with autocast_context(device, amp):
                logits = model(images)
            logits = logits.float()
            sums[0] += F.cross_entropy(logits, targets, reduction="sum").double()
            top = logits.topk(k, dim=1).indices
            hits = top == targets[:, None]
            sums[1] += hits[:, 0].sum()
            sums[2] += hits.any(dim=1).sum()
            confusion += torch.bincount(targets * num_classes + top[:, 0], minlength=num_classes ** 2)
    finally:
        model.train(was_training)
    if context is not None:
        all_reduce_sum(sums, context)
        all_reduce_sum(confusion, context)
    confusion = confusion.view(num_classes, num_classes).cpu()
    count = int(confusion.sum())
    if count == 0:
        raise ValueError("evaluation got no images; the validation set is empty")
    loss, top1, topk = (sums.cpu() / count).tolist()
    return EvalResult(loss, 100.0 * top1, 100.0 * topk, count, confusion)


def per_class_rows(result: EvalResult, class_names: Sequence[str]) -> list[list[object]]:
    """Rows of (class, images, accuracy %) for a table."""
    return [[name, n, f"{acc:.2f}" if n else "-"]
            for name, n, acc in zip(class_names, result.per_class_count, result.per_class_accuracy, strict=True)]


def summary_rows(result: EvalResult) -> list[list[object]]:
    """(metric, value) rows: images, top-1, top-5 and loss."""
    return [["images", result.count], ["top-1 %", f"{result.top1:.2f}"], ["top-5 %", f"{result.top5:.2f}"],
            ["loss", f"{result.loss:.4f}"]]


def confusion_rows(result: EvalResult, class_names: Sequence[str]) -> list[list[object]]:
    """One row per true class: its name, then the count predicted as each class."""
    return [[name, *row] for name, row in zip(class_names, result.confusion.tolist(), strict=True)]
