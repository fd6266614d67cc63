"""Classifying a list of files into a writer, with a progress bar and a summary of failures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..infer import Classifier, Prediction
from .writers import PredictionWriter


@dataclass
class PredictionSummary:
    """How a run over files went: how many were classified, and the ones that failed."""

    total: int
    failed: list[Prediction] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return self.total - len(self.failed)

    def describe(self) -> str:
        """E.g. ``"3 of 120 files failed"``."""
        return f"{len(self.failed)} of {self.total} file{'s' if self.total != 1 else ''} failed"


def predict_files(classifier: Classifier, files: Sequence[str | Path], writer: PredictionWriter, *,
                  top_k: int = 5, batch_size: int = 32, num_workers: int = 0, progress: bool | None = None,
                  on_failure: Callable[[Prediction], None] | None = None) -> PredictionSummary:
    """Classify ``files`` into ``writer`` with a progress bar on stderr (by default for more than
    one file). Each failure is passed to ``on_failure`` as it happens (printed above the bar) and
    the rest go on. The writer is not closed here."""
    show = len(files) > 1 if progress is None else progress
    summary = PredictionSummary(len(files))
    with tqdm(total=len(files), disable=not show, unit="image", desc="predict", dynamic_ncols=True) as bar:
        for prediction in classifier.predict_batch(files, batch_size=batch_size, num_workers=num_workers,
                                                   top_k=top_k):
            writer.write(prediction)
            if not prediction.ok:
                summary.failed.append(prediction)
                if on_failure is not None:
                    with bar.external_write_mode():
                        on_failure(prediction)
            bar.update(1)
    return summary
