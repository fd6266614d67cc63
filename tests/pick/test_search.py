"""``effnet pick``: measuring candidates against the reference, the skip rule, the cache, the
Pareto front and the pick."""

from __future__ import annotations

import csv

import pytest

from effnet.cli import main
from effnet.pick import search as pick_module
from effnet.pick.search import Candidate, Measurement, MeasurementCache, PickRow, PickSettings, mark

QUICK = ["--models", "efficientnet_lite0,efficientnet_lite1", "--runtimes", "onnxruntime,openvino",
         "--resolution", "32", "--max-seconds", "0.3"]


@pytest.mark.slow
def test_pick_measures_marks_the_front_then_answers_another_budget_from_the_cache(tmp_path, capsys, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert main(["pick", "--max-latency-ms", "1000", *QUICK, "--cache-dir", str(cache), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 measured, 0 from the cache" in printed
    assert "Pick efficientnet_lite1 in " in printed and "(published, fp32 weights)" in printed
    rows = list(csv.DictReader((out / "pick.csv").open()))
    assert [(r["model"], r["runtime"]) for r in rows] == [
        ("efficientnet_lite0", "onnxruntime"), ("efficientnet_lite0", "openvino"),
        ("efficientnet_lite1", "onnxruntime"), ("efficientnet_lite1", "openvino")]
    picked = [r for r in rows if r["picked"] == "True"]
    assert len(picked) == 1 and picked[0]["model"] == "efficientnet_lite1" and picked[0]["pareto"] == "True"
    assert all(float(r["p50_ms"]) > 0 and float(r["reference_p50_ms"]) > 0 and float(r["file_mb"]) > 1 for r in rows)
    assert float(rows[0]["top1"]) == pytest.approx(75.1, abs=0.5)
    assert (out / "pick.png").read_bytes()[:4] == b"\x89PNG"
    assert "| >* | efficientnet_lite1 |" in (out / "pick.md").read_text()

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured although the cache holds the candidate")

    monkeypatch.setattr(pick_module, "measure_candidate", no_measuring)
    assert main(["pick", "--max-latency-ms", "0.001", *QUICK, "--cache-dir", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert "0 measured, 2 from the cache" in printed
    assert printed.count("skipped: efficientnet_lite0 already") == 2 and "x ref)" in printed
    assert "No candidate meets 0.001 ms at batch 1 on this machine; the fastest is efficientnet_lite0" in printed


def _row(model: str, top1: float, p50: float, memory: float = 10.0, file_mb: float = 5.0) -> PickRow:
    return PickRow(Candidate(model, "onnxruntime", 1, 224), top1, Measurement(p50, p50, 10.0, memory, file_mb, 5))


def test_pareto_front_and_budgets():
    rows = [_row("a", 75.0, 5.0), _row("b", 77.0, 9.0), _row("c", 76.0, 12.0), _row("d", 80.0, 20.0, memory=500),
            PickRow(Candidate("e", "onnxruntime", 1, 224), 81.0, status="skipped: d already 20.0 ms")]
    marked = mark(rows, PickSettings(max_latency_ms=25, max_memory_mb=100))
    assert [r.pareto for r in marked] == [True, True, False, True, False]
    assert [r.fits for r in marked] == [True, True, True, False, False]
    assert [r.fits for r in mark(rows, PickSettings(max_latency_ms=10, max_file_mb=4))][:2] == [False, False]
    # relative to the reference (10 ms in every row): 0.95x keeps a and b, not c (1.2x)
    assert [r.fits for r in mark(rows, PickSettings(max_latency_ratio=0.95))] == [True, True, False, False, False]


def test_cache_is_keyed_by_the_machine(tmp_path, monkeypatch):
    candidate = Candidate("efficientnet_lite0", "onnxruntime", 1, 224)
    measurement = Measurement(3.0, 4.0, 5.0, 20.0, 18.0, 12)
    MeasurementCache(tmp_path, None, 4.0).put(candidate, measurement)
    assert MeasurementCache(tmp_path, None, 4.0).get(candidate) == measurement
    assert MeasurementCache(tmp_path, 1, 4.0).get(candidate) is None
    monkeypatch.setattr(pick_module, "cpu_description", lambda: {"model": "another CPU", "features": []})
    assert MeasurementCache(tmp_path, None, 4.0).get(candidate) is None


def test_families_list_their_variants_smallest_first():
    assert pick_module.family_variants("v2") == [f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m",
                                                                                  "l", "xl")]
    assert pick_module.family_variants("lite")[0] == "efficientnet_lite0"
    assert pick_module.family_variants("v1")[-1] == "efficientnet_b7"


def test_unknown_runtime_and_family_are_refused(capsys):
    assert main(["pick", "--max-latency-ms", "10", "--runtimes", "tensorrt"]) == 2
    assert "unknown runtime tensorrt; choose from eager, compile, onnxruntime" in capsys.readouterr().err
    assert main(["pick", "--max-latency-ms", "10", "--families", "v3"]) == 2
    assert "unknown family 'v3'; choose from v1, lite, v2" in capsys.readouterr().err
    assert main(["pick", "--families", "lite"]) == 2
    assert "give a latency budget: --max-latency-ms MS, or --max-latency-ratio R" in capsys.readouterr().err


@pytest.mark.slow
def test_checkpoints_are_ranked_by_their_top1_measured_on_the_users_images(tmp_path, capsys):
    from dataclasses import replace

    import torch

    from effnet.deploy.calibration import labelled_loader
    from effnet.weights.io import save_model
    from helpers.deploy import tiny_model, write_images

    data, calib = write_images(tmp_path / "eval", seed=1), write_images(tmp_path / "calib")
    paths, expected = [], {}
    for name in ("efficientnet_lite0", "efficientnet_b0"):
        model = tiny_model(name=name)
        size = 32 if name == "efficientnet_lite0" else 40  # siblings of other sizes than the reference's 224
        model.describe(class_names=["0", "1", "2"], preprocessing=replace(model.preprocessing, resolution=size))
        paths.append(save_model(model, tmp_path / f"{name}.safetensors"))
        with torch.no_grad():
            hits = [(model(images).argmax(1) == labels).float() for images, labels in
                    labelled_loader(data, model.preprocessing, model.class_names)]
        expected[name] = 100 * torch.cat(hits).mean().item()
    assert main(["pick", "--max-latency-ms", "1000", "--runtimes", "onnxruntime,onnxruntime-int8",
                 "--checkpoint", str(paths[0]), "--checkpoint", str(paths[1]), "--eval", str(data),
                 "--calib", str(calib), "--max-seconds", "0.2", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "out")]) == 0
    assert "measured on " in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "out" / "pick.csv").open()))
    assert [(r["model"], r["runtime"]) for r in rows] == [
        ("efficientnet_lite0 (efficientnet_lite0.safetensors)", "onnxruntime"),
        ("efficientnet_lite0 (efficientnet_lite0.safetensors)", "onnxruntime-int8"),
        ("efficientnet_b0 (efficientnet_b0.safetensors)", "onnxruntime"),
        ("efficientnet_b0 (efficientnet_b0.safetensors)", "onnxruntime-int8")]
    assert all(r["top1_measured"] == "True" for r in rows)
    assert [r["resolution"] for r in rows] == ["32", "32", "40", "40"]
    assert float(rows[0]["top1"]) == pytest.approx(expected["efficientnet_lite0"])
    assert float(rows[2]["top1"]) == pytest.approx(expected["efficientnet_b0"])


def test_checkpoints_need_an_evaluation_folder(tmp_path, capsys):
    assert main(["pick", "--max-latency-ms", "10", "--checkpoint", str(tmp_path / "a.safetensors")]) == 2
    assert "pass --eval DIR" in capsys.readouterr().err
