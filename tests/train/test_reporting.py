"""effnet.train.reporting: the evaluation files a run and ``effnet eval`` leave."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from effnet.train.metrics import EvalResult, Mistake
from effnet.train.reporting import save_evaluation
from helpers.predict import BAD_NAME, CLASSES


def test_per_class_and_confusion_csv_quote_class_names_with_commas_and_quotes(tmp_path):
    confusion = torch.tensor([[2, 1, 0], [0, 3, 0], [1, 0, 1]])
    result = EvalResult(loss=0.5, top1=75.0, top5=100.0, count=8, confusion=confusion,
                        mistakes=[Mistake(Path(os.fsdecode(b"/data/" + BAD_NAME)), CLASSES[0], CLASSES[1], 0.9)])
    save_evaluation(result, CLASSES, tmp_path)
    per_class = list(csv.reader((tmp_path / "per_class.csv").open(encoding="utf-8")))
    assert per_class == [["class", "images", "accuracy"], [CLASSES[0], "3", "66.6667"], [CLASSES[1], "3", "100.0000"],
                         [CLASSES[2], "2", "50.0000"]]
    matrix = list(csv.reader((tmp_path / "confusion_matrix.csv").open(encoding="utf-8")))
    assert matrix[0] == ["true\\predicted", *CLASSES]
    assert [row[0] for row in matrix[1:]] == CLASSES and [list(map(int, row[1:])) for row in matrix[1:]] == \
        confusion.tolist()
    [mistake] = list(csv.DictReader((tmp_path / "mistakes.csv").open(encoding="utf-8")))
    assert mistake["path"] == "/data/img_\\xff.png" and mistake["predicted_class"] == CLASSES[1]


def test_a_name_that_is_not_utf8_in_the_validation_set_leaves_every_output(finished_run):
    for name in ("mistakes.csv", "per_class.csv", "confusion_matrix.csv", "model.safetensors", "train.log"):
        assert (finished_run / name).is_file(), name
    rows = list(csv.DictReader((finished_run / "mistakes.csv").open(encoding="utf-8")))
    assert all(os.path.exists(row["path"]) or row["path"].endswith("odd_\\xff.png") for row in rows)
