"""Every command works on EfficientNetV2 names and V2 checkpoints (a tiny V2-B0 at 32 px)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from effnet.bench.peers import DEFAULT_MODELS
from effnet.cli import main
from effnet.layers import FusedMBConv
from effnet.weights.io import load_model
from helpers.train import tiny_assignments

pytestmark = pytest.mark.usefixtures("single_thread")
TINY_V2 = {"width": 0.25, "depth": 0.2}


def _sets(**overrides) -> list[str]:
    settings = {"model.overrides": TINY_V2, "schedule.warmup_epochs": 0, **overrides}
    return [arg for item in tiny_assignments(**settings) for arg in ("--set", item)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, image_folder) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", str(image_folder), "--model", "efficientnet_v2_b0", "--out", str(run_dir),
                 "--epochs", "1",
                 "--no-progress", *_sets()]) == 0
    return run_dir / "model.safetensors"


@pytest.mark.slow
def test_models_lists_the_v2_family(capsys) -> None:
    assert main(["models", "--filter", "v2"]) == 0
    printed = capsys.readouterr().out
    assert all(f"efficientnet_v2_{size}" in printed for size in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl"))


def test_train_writes_a_v2_model_that_eval_and_predict_read(trained, image_folder, tmp_path, capsys) -> None:
    model = load_model(trained)
    assert model.model_name == "efficientnet_v2_b0" and any(isinstance(m, FusedMBConv) for m in model.modules())
    assert model.preprocessing.resolution == 32
    assert main(["eval", "--checkpoint", str(trained), "--data", str(image_folder), "--workers", "0"]) == 0
    assert "top-1 %" in capsys.readouterr().out
    image = next((image_folder / "val" / "class_1").iterdir())
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(image), "--checkpoint", str(trained), "--format", "csv", "--out", str(out),
                 "--no-progress"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [row["rank"] for row in rows] == ["1", "2", "3"] and all(row["path"] == str(image) for row in rows)
    assert {row["class_name"] for row in rows} == {"class_0", "class_1", "class_2"}


def test_finetune_from_a_v2_run(trained, image_folder, tmp_path, capsys) -> None:
    out = tmp_path / "tuned"
    assert main(["finetune", "--from", str(trained.parent), "--data", str(image_folder), "--strategy", "full",
                 "--epochs", "1",
                 "--img-size", "32", "--out", str(out), "--no-progress", *_sets()]) == 0
    assert "val top-1 %" in capsys.readouterr().out
    assert load_model(out / "model.safetensors").model_name == "efficientnet_v2_b0"


@pytest.mark.slow
def test_export_onnx_is_verified_in_onnx_runtime(trained, capsys) -> None:
    out = trained.parent / "v2.onnx"
    assert main(["export", "--checkpoint", str(trained), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "max|diff|" in printed


@pytest.mark.slow
def test_quantize_a_v2_checkpoint(trained, image_folder, tmp_path, capsys) -> None:
    out = tmp_path / "v2.int8.onnx"
    assert main(["quantize", "--checkpoint", str(trained), "--calib", str(image_folder / "train"),
                 "--eval", str(image_folder / "val"),
                 "--out", str(out), "--no-speed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("onnx fp32") and lines[3].startswith("onnx int8") and out.is_file()


@pytest.mark.slow
def test_bench_measures_v2(tmp_path, capsys) -> None:
    assert {"efficientnet_v2_b0", "efficientnet_v2_s"} <= set(DEFAULT_MODELS)
    out = tmp_path / "bench"
    assert main(["bench", "--models", "efficientnet_v2_b0", "--resolution", "32", "--batch", "1", "--iterations", "2",
                 "--min-iterations", "1", "--warmup", "1", "--out", str(out)]) == 0
    records = list(csv.DictReader((out / "bench.csv").open()))
    assert records[0]["model"] == "efficientnet_v2_b0" and int(records[0]["params"]) == 7_139_704
    assert float(records[0]["top1"]) == 78.7
    assert records[0]["status"] == "ok"
