"""``effnet eval``: memory and output grow with the images evaluated, not with the model's classes."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from effnet import create_model
from effnet.weights.io import save_model
from helpers.process import GB, run_effnet

CLASSES = 10_000


@pytest.mark.slow
def test_a_ten_thousand_class_model_on_six_images_costs_memory_and_output_for_six(tmp_path):
    model = create_model("efficientnet_b0", num_classes=CLASSES, width=0.25, depth=0.25, resolution=32)
    model.describe(class_names=[f"c{i}" for i in range(CLASSES)])
    checkpoint = save_model(model, tmp_path / "wide.safetensors")
    for name in ("c3", "c9999"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for index in range(3):
            Image.new("RGB", (32, 32), (80 * index, 40, 200)).save(tmp_path / "data" / name / f"{index}.png")
    done = run_effnet(["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "data"), "--workers", "0",
                       "--device", "cpu", "--out", str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) < 40  # the summary, two classes, the mistakes: not 10,000 rows
    assert done.peak_rss < 1.5 * GB, f"peak resident memory {done.peak_rss / GB:.2f} GB"  # dense: 7.6 GB
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "confusion_matrix.csv" not in written and "confusion_pairs.csv" in written
    with open(tmp_path / "out" / "confusion_pairs.csv", newline="") as handle:
        pairs = list(csv.DictReader(handle))
    assert sum(int(row["images"]) for row in pairs) == 6 and {row["true"] for row in pairs} == {"c3", "c9999"}
    with open(tmp_path / "out" / "per_class.csv", newline="") as handle:
        assert [row["class"] for row in csv.DictReader(handle)] == ["c3", "c9999"]
