"""benchmarks/gpu.py keeps working without a GPU: its --smoke run, a missing timm, the budget."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import effnet

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _script_module():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_script(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 1500) -> dict:
    out = tmp_path / "gpu_bench.json"
    # As the lead runs it: effnet from src, nothing installed needed beyond torch/torchvision/timm.
    environment = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **(env or {}))
    completed = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], cwd=tmp_path,
                               env=environment, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.cpu_kinds
def test_smoke_runs_every_row_and_writes_json(tmp_path):
    # A budget far above the smoke's own 240 s: a slow or shared CI machine must not skip rows here
    # (skipping is test_budget_skips_rows_with_a_note's subject).
    result = run_script(tmp_path, "--smoke", "--budget", "1200")
    rows = {row["key"]: row for row in result["rows"]}
    eager = [key for key in rows if "_compiled" not in key and not key.startswith("input_")]
    feeds = {f"input_b0.{feed}" for feed in ("model_alone", "cpu_decode", "gpu_decode", "timm_loader")}
    compiled = {"infer_b0_compiled.ours_fast", "infer_b4_compiled.ours_fast", "infer_b7_compiled.ours_fast",
                "infer_b0_compiled.ours_fast_compiled",
                "train_b0_compiled.ours_lowmem", "infer_b0_compiled.ours", "train_b0_compiled.ours"}
    assert len(eager) == 14 and set(rows) == set(eager) | feeds | compiled
    for key, row in rows.items():
        assert row["status"] == "ok", (key, row["status"])
        assert row["img_s"] > 0 and row["resolution"] == 32 and row["batch"] == 2
        if key not in feeds:
            assert len(row["loop_seconds"]) == 3 and row["steps_per_loop"] >= 2
    # the input job's aims are computed from its own rows of this run
    aims = {(aim["ours"], aim["other"]): aim for aim in result["aims"]}
    assert set(aims) == {("input_b0.gpu_decode", "input_b0.model_alone"),
                         ("input_b0.gpu_decode", "input_b0.timm_loader")}
    for (ours, other), aim in aims.items():
        assert aim["ratio"] == pytest.approx(rows[ours]["img_s"] / rows[other]["img_s"], rel=1e-2)
        assert aim["met"] == (aim["ratio"] >= aim["aim"])
    # each row carries its own job's anchor (and the rows without one carry none)
    anchors = _script_module().ANCHORS
    for key, row in rows.items():
        assert row["anchor_img_s"] == anchors.get((row["job"], key.split(".")[1])), key
    assert {key for key, row in rows.items() if row["anchor_img_s"]} >= {"infer_b0.torchvision", "train_b0.timm"}
    jobs = {(r["job"], r["peer"]) for r in result["ratios"]}
    assert {("infer_b0", "torchvision"), ("infer_b0", "timm"), ("train_b0", "timm"), ("infer_b7", "timm")} <= jobs
    assert result["environment"]["device"] == "cpu" and result["environment"]["timm"]


@pytest.mark.slow
def test_missing_timm_skips_its_rows(tmp_path):
    fake = tmp_path / "no_timm" / "timm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('timm is broken here')\n")
    out = tmp_path / "gpu_bench.json"
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(fake.parent)]))
    completed = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--only", "infer_b0.", "--out", str(out)],
                               cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = {row["key"]: row["status"] for row in json.loads(out.read_text())["rows"]}
    assert rows == {"infer_b0.ours": "ok", "infer_b0.torchvision": "ok",
                    "infer_b0.timm": "skipped: timm is not installed"}
    assert "ours/torchvision" in completed.stdout


@pytest.mark.slow
def test_budget_skips_rows_with_a_note(tmp_path):
    result = run_script(tmp_path, "--smoke", "--budget", "1")
    statuses = {row["key"]: row["status"] for row in result["rows"]}
    assert len(statuses) == 25
    assert statuses["input_b0.gpu_decode"] == "skipped: time budget used up"
    assert all(status.startswith("skipped:") for status in statuses.values())
    assert statuses["infer_b0.ours"] == "skipped: time budget used up"
    assert "too little to compile" in statuses["train_b0_compiled.ours"]
    assert result["ratios"] == []


def test_aims_compare_speed_upwards_and_memory_downwards():
    gpu = _script_module()
    rows = {source: gpu.Row("train", "b0", True, source) for source in ("ours_lowmem", "timm")}
    results = [gpu.Result(rows["ours_lowmem"], 224, 256, img_s=7000.0, peak_gib=6.0),
               gpu.Result(rows["timm"], 224, 256, img_s=6675.0, peak_gib=6.87)]
    found = {aim["measure"]: aim for aim in gpu.aims(results)}
    assert found["img_s"]["ratio"] == pytest.approx(7000 / 6675, abs=1e-3) and not found["img_s"]["met"]  # < 1.1
    assert found["peak_gib"]["ratio"] == pytest.approx(6.0 / 6.87, abs=1e-3) and not found["peak_gib"]["met"]
    results[0].peak_gib, results[0].img_s = 5.4, 7400.0
    assert all(aim["met"] for aim in gpu.aims(results))
    results[1].status = "out of memory"  # a row that did not run gives no ratio
    assert gpu.aims(results) == []


def test_a_fast_row_whose_logits_are_wrong_fails_before_it_is_timed():
    gpu = _script_module()
    network = effnet.create_model("efficientnet_b0", width=0.25, depth=0.25, num_classes=5).eval()
    images = torch.randn(2, 3, 32, 32)
    row = gpu.Row("infer", "b0", True, "ours_fast")
    gpu.check_prepared(row, network, gpu.prepare_for_inference(network, "cpu", dtype=torch.bfloat16), images)
    with pytest.raises(RuntimeError, match="prepared logits differ from the eager network's by 1 of the largest"):
        gpu.check_prepared(row, network, lambda x: torch.zeros(2, 5), images)
