"""Per-image predictions and the misclassified-image list of an evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from effnet.train.metrics import Predictions, evaluate, find_mistakes

LOGITS = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 5.0, 0.0]])
TARGETS = torch.tensor([0, 1, 1, 2, 2])  # images 2 and 4 are wrong


def _predictions() -> Predictions:
    batches = [(LOGITS[:3], TARGETS[:3]), (LOGITS[3:], TARGETS[3:])]  # the "model" passes logits through
    result = evaluate(nn.Identity(), batches, 3, torch.device("cpu"), keep_predictions=True)
    assert result.top1 == pytest.approx(60.0) and result.predictions is not None
    return result.predictions


def test_predictions_follow_the_evaluation_order() -> None:
    predictions = _predictions()
    assert predictions.targets.tolist() == TARGETS.tolist()
    assert predictions.predicted.tolist() == [0, 1, 0, 2, 1]
    assert torch.allclose(predictions.confidence, LOGITS.softmax(dim=1).amax(dim=1))
    assert evaluate(nn.Identity(), [(LOGITS, TARGETS)], 3, torch.device("cpu")).predictions is None


def test_mistakes_name_the_files_most_confident_first() -> None:
    samples = [(Path(f"img{i}.png"), int(label)) for i, label in enumerate(TARGETS)]
    mistakes = find_mistakes(_predictions(), samples, ["cat", "dog", "fox"])
    assert [(m.path.name, m.true_class, m.predicted_class) for m in mistakes] == [
        ("img4.png", "fox", "dog"), ("img2.png", "dog", "cat")]
    assert mistakes[0].confidence == pytest.approx(LOGITS[4].softmax(0)[1].item())
    assert mistakes[0].confidence > mistakes[1].confidence
    # A file that failed to load was replaced by another image: its prediction is not its own.
    assert [m.path.name for m in find_mistakes(_predictions(), samples, ["cat", "dog", "fox"],
                                               skipped=[(Path("img4.png"), "truncated")])] == ["img2.png"]
    with pytest.raises(ValueError, match="5 predictions for 4 image files"):
        find_mistakes(_predictions(), samples[:4], ["cat", "dog", "fox"])


def test_distributed_shards_interleave_back_into_dataset_order() -> None:
    whole = _predictions()
    shards = [Predictions(whole.targets[rank::2], whole.predicted[rank::2], whole.confidence[rank::2])
              for rank in range(2)]  # rank r evaluated images r, r + 2, ... (5 images: uneven shards)
    merged = Predictions.interleave(shards)
    for name in ("targets", "predicted", "confidence"):
        assert torch.equal(getattr(merged, name), getattr(whole, name))


def test_the_confusion_matrix_counts_true_class_rows_and_predicted_columns() -> None:
    batches = [(LOGITS[:3], TARGETS[:3]), (LOGITS[3:], TARGETS[3:])]
    confusion = evaluate(nn.Identity(), batches, 3, torch.device("cpu")).confusion
    assert confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]  # predicted 0, 1, 0, 2, 1
