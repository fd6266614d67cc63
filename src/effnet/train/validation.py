"""A run's validation: each epoch's raw and EMA weights, and at the end the kept weights in full.

Every process evaluates its shard of the validation images and the counts are summed over
processes (:func:`~effnet.train.metrics.evaluate`). :meth:`Validation.epoch` gives an epoch's
results and their history columns; :meth:`Validation.final` evaluates the weights kept in
``best.pt`` once more, with every prediction, and the main process writes the confusion
matrix, the per-class table and the misclassified images next to them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..data.datasets import ImageDataset
from ..weights.trained import BEST, MODEL, model_from_checkpoint, read_training_checkpoint
from .distributed import DistContext, all_gather_objects, broadcast_object
from .metrics import EvalResult, Predictions, evaluate, find_mistakes
from .reporting import LOG, save_evaluation


class Validation:
    """Evaluation on the run's validation images (``loader`` yields this process's shard of ``val_set``)."""

    def __init__(self, loader: Iterable, val_set: ImageDataset, class_names: list[str], context: DistContext,
                 amp: str | None, channels_last: bool) -> None:
        self.loader, self.val_set, self.class_names, self.context = loader, val_set, class_names, context
        self.amp, self.channels_last = amp, channels_last

    def evaluate(self, model: nn.Module, keep_predictions: bool = False) -> EvalResult:
        return evaluate(model, self.loader, len(self.class_names), self.context.device, amp=self.amp,
                        channels_last=self.channels_last, context=self.context,
                        keep_predictions=keep_predictions)

    def epoch(self, models: dict[str, nn.Module]) -> tuple[dict[str, EvalResult], dict[str, float]]:
        """Each of ``models`` (``model``, and ``ema`` with EMA) evaluated in turn, and the history
        columns of the results: ``val_loss``, ``val_top1``, ``val_top5``, then ``ema_val_...``."""
        results, columns = {}, {}
        for name, model in models.items():
            results[name] = result = self.evaluate(model)
            prefix = "" if name == "model" else f"{name}_"
            columns.update({f"{prefix}val_loss": result.loss, f"{prefix}val_top1": result.top1,
                            f"{prefix}val_top5": result.top5})
        return results, columns

    def final(self, run_dir: Path, model_name: str) -> EvalResult:
        """Evaluate the best weights; write the confusion matrix and the misclassified images."""
        best = read_training_checkpoint(run_dir / BEST) if self.context.is_main else None
        best = broadcast_object(best, self.context)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        model = model_from_checkpoint(best).to(self.context.device, memory_format=memory_format)
        final = self.evaluate(model, keep_predictions=True)
        shards = all_gather_objects(final.predictions, self.context)
        if self.context.is_main:
            final.predictions = Predictions.interleave(shards)
            final.mistakes = find_mistakes(final.predictions, self.val_set.samples, self.class_names,
                                           self.val_set.skipped)
            title = f"{model_name}, epoch {best['best']['epoch']} ({best['eval_weights']} weights): " \
                    f"top-1 {final.top1:.2f}%"
            save_evaluation(final, self.class_names, run_dir, title)
            LOG.info("best: epoch %d (%s weights), val top-1 %.2f%%, top-5 %.2f%%; model in %s",
                     best["best"]["epoch"], best["eval_weights"], final.top1, final.top5, run_dir / MODEL)
        return final
