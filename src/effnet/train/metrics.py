"""Classification metrics: top-1/top-5, loss, per-class accuracy and the confusion matrix.

The confusion matrix is dense up to :data:`DENSE_CONFUSION_CLASSES` classes; beyond, it is a
sparse COO tensor of the (true, predicted) pairs that occurred, so that evaluating a model of
10,000 classes on 30 images costs memory for 30 pairs, not 10^8 counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..device import autocast_context
from ..errors import ConfigError
from .distributed import DistContext, all_gather_objects, all_reduce_sum

DENSE_CONFUSION_CLASSES = 1000
"""Up to this many classes (ImageNet's: 8 MB of counts) the confusion matrix is a dense tensor."""


@dataclass
class Predictions:
    """Per image, in the order evaluated: the true and the predicted class (the model's
    indices) and the probability the model gave its prediction."""

    targets: torch.Tensor
    predicted: torch.Tensor
    confidence: torch.Tensor

    @staticmethod
    def interleave(shards: Sequence[Predictions]) -> Predictions:
        """Reassemble the shards of a distributed evaluation (rank ``r`` had images ``r, r + W, ...``)."""
        world = len(shards)
        total = sum(len(shard.targets) for shard in shards)
        merged = []
        for name in ("targets", "predicted", "confidence"):
            column = torch.empty(total, dtype=getattr(shards[0], name).dtype)
            for rank, shard in enumerate(shards):
                column[rank::world] = getattr(shard, name)
            merged.append(column)
        return Predictions(*merged)


@dataclass
class Mistake:
    """A misclassified image: its file, true and predicted class names, and the model's confidence."""

    path: Path
    true_class: str
    predicted_class: str
    confidence: float


@dataclass
class EvalResult:
    """Metrics over a dataset; accuracies in percent. ``confusion[true, predicted]`` counts.

    ``predictions`` are kept on request (``evaluate(keep_predictions=True)``); ``mistakes``
    are filled by callers that know the image files (see :func:`find_mistakes`).
    """

    loss: float
    top1: float
    top5: float
    count: int
    confusion: torch.Tensor
    predictions: Predictions | None = None
    mistakes: list[Mistake] = field(default_factory=list)

    @property
    def per_class_accuracy(self) -> list[float]:
        """Percent correct per true class (NaN for a class with no images)."""
        true, predicted, counts = confusion_entries(self.confusion)
        totals = torch.zeros(self.confusion.shape[0], dtype=torch.float64).index_add_(0, true, counts.double())
        hits = true == predicted
        correct = torch.zeros_like(totals).index_add_(0, true[hits], counts[hits].double())
        return (100.0 * correct / totals).tolist()

    @property
    def per_class_count(self) -> list[int]:
        true, _, counts = confusion_entries(self.confusion)
        return torch.zeros(self.confusion.shape[0], dtype=torch.int64).index_add_(0, true, counts).tolist()


def confusion_entries(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The non-zero cells of a dense or sparse confusion matrix: ``(true, predicted, count)``
    tensors, in row-major order."""
    if confusion.is_sparse:
        confusion = confusion.coalesce()
        indices = confusion.indices()
        return indices[0], indices[1], confusion.values()
    true, predicted = torch.nonzero(confusion, as_tuple=True)
    return true, predicted, confusion[true, predicted]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, num_classes: int, device: torch.device,
             amp: str | None = None, channels_last: bool = False,
             context: DistContext | None = None, target_map: list[int] | None = None,
             keep_predictions: bool = False) -> EvalResult:
    """Run ``model`` in eval mode over ``(images, targets)`` batches and gather the metrics.

    In a distributed run each process passes its own shard and the sums are combined, so
    every image counts exactly once. ``target_map`` translates dataset class indices to the
    model's (when the data lists the classes in another order, or only some of them).
    ``keep_predictions``: also return each image's prediction (this process's shard only).
    """
    mapping = torch.tensor(target_map, device=device) if target_map is not None else None
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1, top-k
    dense = num_classes <= DENSE_CONFUSION_CLASSES
    confusion = torch.zeros(num_classes * num_classes if dense else 0, dtype=torch.int64, device=device)
    pairs: list[torch.Tensor] = []  # beyond DENSE_CONFUSION_CLASSES: each image's true * n + predicted
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    kept: dict[str, list[torch.Tensor]] = {"targets": [], "predicted": [], "confidence": []}
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
            # scatter_add_, not bincount: bincount on CUDA reads its input's range back to the host
            if dense:
                confusion.scatter_add_(0, targets * num_classes + top[:, 0], torch.ones_like(targets))
            else:
                pairs.append(targets * num_classes + top[:, 0])
            if keep_predictions:
                kept["targets"].append(targets.cpu())
                kept["predicted"].append(top[:, 0].cpu())
                kept["confidence"].append(logits.softmax(dim=1).gather(1, top[:, :1]).squeeze(1).cpu())
    finally:
        model.train(was_training)
    if context is not None:
        all_reduce_sum(sums, context)
        if dense:
            all_reduce_sum(confusion, context)
    if dense:
        confusion = confusion.view(num_classes, num_classes).cpu()
    else:
        confusion = _sparse_confusion(pairs, num_classes, context)
    count = int(confusion_entries(confusion)[2].sum())
    if count == 0:
        raise ConfigError("evaluation got no images; the validation set is empty")
    loss, top1, topk = (sums.cpu() / count).tolist()
    predictions = None
    if keep_predictions:  # a process may hold no images of a small validation set
        predictions = Predictions(*(torch.cat(kept[name]) if kept[name] else torch.zeros(0, dtype=dtype)
                                    for name, dtype in (("targets", torch.int64), ("predicted", torch.int64),
                                                        ("confidence", torch.float32))))
    return EvalResult(loss, 100.0 * top1, 100.0 * topk, count, confusion, predictions)


def _sparse_confusion(pairs: list[torch.Tensor], num_classes: int, context: DistContext | None) -> torch.Tensor:
    """The ``num_classes`` square confusion matrix, sparse, of every process's (true, predicted) pairs."""
    codes = torch.cat(pairs).cpu() if pairs else torch.zeros(0, dtype=torch.int64)
    if context is not None:
        codes = torch.cat(all_gather_objects(codes, context))
    cells, counts = torch.unique(codes, return_counts=True)
    indices = torch.stack([cells // num_classes, cells % num_classes])
    return torch.sparse_coo_tensor(indices, counts, (num_classes, num_classes), check_invariants=True).coalesce()


def find_mistakes(predictions: Predictions, samples: Sequence[tuple[Path, int]], class_names: Sequence[str],
                  skipped: Iterable[tuple[Path, str]] = ()) -> list[Mistake]:
    """The misclassified images, most confident first. ``samples[i]`` (a dataset's
    ``(path, label)``) is the image of the ``i``-th prediction; the ``skipped`` files (a
    dataset's ``skipped``: those that failed to load read another image in their place) are
    left out."""
    if len(samples) != len(predictions.targets):
        raise ConfigError(f"{len(predictions.targets)} predictions for {len(samples)} image files")
    left_out = {path for path, _ in skipped}
    wrong = torch.nonzero(predictions.predicted != predictions.targets).flatten().tolist()
    mistakes = [Mistake(samples[i][0], class_names[int(predictions.targets[i])],
                        class_names[int(predictions.predicted[i])], float(predictions.confidence[i]))
                for i in wrong if samples[i][0] not in left_out]
    return sorted(mistakes, key=lambda mistake: -mistake.confidence)


def per_class_rows(result: EvalResult, class_names: Sequence[str]) -> list[list[object]]:
    """Rows of (class, images, accuracy %) for a table: every class, or beyond
    :data:`DENSE_CONFUSION_CLASSES` classes those with images (the output grows with the images)."""
    rows = zip(class_names, result.per_class_count, result.per_class_accuracy, strict=True)
    every = len(class_names) <= DENSE_CONFUSION_CLASSES
    return [[name, n, f"{acc:.2f}" if n else "-"] for name, n, acc in rows if n or every]


def summary_rows(result: EvalResult) -> list[list[object]]:
    """(metric, value) rows: images, top-1, top-5 and loss."""
    return [["images", result.count], ["top-1 %", f"{result.top1:.2f}"], ["top-5 %", f"{result.top5:.2f}"],
            ["loss", f"{result.loss:.4f}"]]


def confusion_rows(result: EvalResult, class_names: Sequence[str]) -> list[list[object]]:
    """One row per true class: its name, then the count predicted as each class."""
    return [[name, *row] for name, row in zip(class_names, result.confusion.tolist(), strict=True)]


def mistake_rows(mistakes: Sequence[Mistake], limit: int) -> list[list[object]]:
    """Rows of (file, true class, predicted class, confidence %) for the first ``limit`` mistakes."""
    return [[str(m.path), m.true_class, m.predicted_class, f"{100 * m.confidence:.1f}"] for m in mistakes[:limit]]
