"""benchmarks/gpu_input.py runs without a GPU (--smoke) and reports every feed and ratio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_feeds_the_model_four_ways(tmp_path) -> None:
    out = tmp_path / "gpu_input.json"
    script = ROOT / "benchmarks" / "gpu_input.py"
    completed = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(out)], cwd=tmp_path,
                               env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["img_s"]) == {"model_alone", "cpu_decode", "gpu_decode", "timm_loader"}
    assert all(rate > 0 for rate in result["img_s"].values())
    assert set(result["ratios"]) == {"gpu_decode/model_alone", "gpu_decode/cpu_decode", "gpu_decode/timm_loader"}
    assert result["environment"]["device"] == "cpu" and result["environment"]["cpu_capability"]
    assert "gpu_decode/timm_loader" in completed.stdout


@pytest.mark.slow
def test_augment_mode_times_the_batched_preset_against_the_per_image_one(tmp_path) -> None:
    out = tmp_path / "augment.json"
    completed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_input.py"), "--augment", "--smoke",
                                "--out", str(out)], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["augment"]) == {"photos", "overhead"} and result["device"] == "cpu"
    for timing in result["augment"].values():
        assert timing["batched_ms"] > 0 and timing["per_image_ms"] > 0
        assert timing["speedup"] == pytest.approx(timing["per_image_ms"] / timing["batched_ms"])
    assert "per image" in completed.stdout
