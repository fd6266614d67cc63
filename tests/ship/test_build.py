"""``effnet ship``: the folder it writes, its standalone predict.py (run without torch), the
accuracy gate with its remedies, and the OpenVINO targets."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effnet.cli import main
from effnet.deploy.export import export_model
from effnet.deploy.openvino import bf16_supported
from effnet.deploy.runtime import onnx_runner
from effnet.description import Preprocessing
from effnet.infer import load_classifier
from effnet.ship import build as ship_module
from effnet.weights.io import save_model
from helpers.deploy import tiny_model, write_images

CLASSES = ["0", "1", "2"]
MANIFEST_KEYS = {"runtime", "model_file", "model_name", "target", "precision", "input_size"}
# Runs a script with torch, torchvision and effnet made unimportable, as on a machine without them.
NO_TORCH = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "effnet"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Block())
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def run_predict(folder: Path, *paths: Path, block_torch: bool = True) -> list[dict[str, str]]:
    """Run the folder's predict.py in a fresh, isolated interpreter; its CSV rows."""
    command = [sys.executable, "-I", "-c", NO_TORCH] if block_torch else [sys.executable, "-I"]
    done = subprocess.run([*command, str(folder / "predict.py"), *map(str, paths)], capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return list(csv.DictReader(io.StringIO(done.stdout)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ship")
    model = tiny_model()
    model.describe(class_names=CLASSES)
    checkpoint = save_model(model, root / "tiny.safetensors")
    odd = root / "odd"
    odd.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (37, 61, 3), dtype=np.uint8)).save(odd / "wide.png")
    Image.fromarray(rng.integers(0, 255, (70, 29), dtype=np.uint8), mode="L").save(odd / "tall_grey.png")
    Image.fromarray(rng.integers(0, 255, (45, 45, 4), dtype=np.uint8), mode="RGBA").save(odd / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (52, 40, 3), dtype=np.uint8)).save(odd / "photo.jpg", quality=90)
    return {"root": root, "model": model, "checkpoint": checkpoint, "calib": write_images(root / "calib"),
            "eval": write_images(root / "eval", seed=1), "odd": odd}


UNTRAINED = ("--min-top1", "0", "--min-agreement", "0")
"""The gate's flags for the tiny untrained models these tests ship: their top-1 is at chance level
and their INT8 answers may differ from fp32's, which the gate would otherwise refuse."""


def ship_cli(data, target: str, out: Path, *extra: str, gate: tuple[str, ...] = UNTRAINED) -> int:
    return main(["ship", "--checkpoint", str(data["checkpoint"]), "--target", target, "--calib", str(data["calib"]),
                 "--eval", str(data["eval"]), "--out", str(out), *gate, *extra])


@pytest.mark.slow
def test_onnxruntime_folder_predicts_without_torch_like_effnet_predict(data, tmp_path, capsys):
    out = tmp_path / "ship"
    assert ship_cli(data, "onnxruntime", out) == 0
    assert capsys.readouterr().out.startswith("shipped efficientnet_b0 as onnxruntime to")
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion.png", "effnet_portable.py", "labels.json", "manifest.json", "model.onnx", "predict.py",
        "preprocessing.json", "report.html", "report.md"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert MANIFEST_KEYS <= set(manifest)
    assert (manifest["runtime"], manifest["model_file"], manifest["precision"], manifest["input_size"]) == (
        "onnxruntime", "model.onnx", "fp32", 32)
    assert json.loads((out / "labels.json").read_text()) == CLASSES
    assert Preprocessing.from_dict(json.loads((out / "preprocessing.json").read_text())) == data["model"].preprocessing
    report, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "| fp32 reference (onnxruntime) |" in report and "latency b1 ms (p10-p90)" in report
    assert "load average" in report and "timed in turns, round after round" in report
    assert "effnet ship --checkpoint" in report and "onnxruntime " in report.split("Versions:")[1]
    assert page.count("data:image/png;base64,") == 2 and 'src="http' not in page and "confusion.png" not in page

    files = sorted(data["odd"].iterdir()) + sorted((data["eval"] / "1").iterdir())
    rows = run_predict(out, *files)
    assert [Path(r["path"]) for r in rows] == files
    assert main(["predict", *map(str, files), "--checkpoint", str(data["checkpoint"]), "--format", "csv",
                 "--top-k", "1", "--device", "cpu", "--no-progress"]) == 0
    effnet_rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["label"] for r in rows] == [r["class_name"] for r in effnet_rows]
    # Same preprocessing, not only the same answer: the shipped model on effnet's own preprocessing.
    classifier = load_classifier(checkpoint=data["checkpoint"], device="cpu")
    batch = torch.stack([classifier.preprocess(path) for path in files]).numpy()
    expected = torch.softmax(torch.from_numpy(onnx_runner(out / "model.onnx")(batch)), 1).max(1).values.numpy()
    np.testing.assert_allclose([float(r["probability"]) for r in rows], expected, atol=2e-6)


@pytest.mark.slow
def test_int8_folder_reports_its_accuracy_and_its_predict_script_runs_without_torch(data, tmp_path):
    out = tmp_path / "int8"
    assert ship_cli(data, "onnxruntime-int8", out, "--no-speed", "--keep-float", "stem") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["precision"], manifest["keep_float"], manifest["quantization"]) == (
        "int8", ["stem"], "onnxruntime QDQ static")
    assert 0 <= manifest["agreement"] <= 1 and manifest["eval_images"] == 12
    assert len(run_predict(out, data["eval"])) == 12


@pytest.mark.slow
def test_openvino_targets_set_their_precision_explicitly(data, tmp_path):
    targets = ["openvino", "openvino-int8"] + (["openvino-bf16"] if bf16_supported() else [])
    for target in targets:
        out = tmp_path / target
        assert ship_cli(data, target, out, "--no-speed") == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["model_file"] == "model.xml" and (out / "model.bin").is_file()
        assert manifest["precision"] == {"openvino": "fp32", "openvino-int8": "int8", "openvino-bf16": "bf16"}[target]
        assert manifest["inference_precision"] == ("bf16" if target == "openvino-bf16" else "f32")
        if target == "openvino":
            assert manifest["agreement"] == 1.0 and manifest["sqnr_db"] > 80  # fp32 kept fp32, not bf16
        assert len(run_predict(out, data["odd"])) == 4


@pytest.mark.skipif(bf16_supported(), reason="this CPU has bf16")
def test_openvino_bf16_is_refused_on_a_cpu_without_bf16(data, tmp_path, capsys):
    assert ship_cli(data, "openvino-bf16", tmp_path / "bf16") == 2
    assert "openvino-bf16 is unavailable" in capsys.readouterr().err


@pytest.mark.slow
def test_torchscript_folder_predicts_with_torch(data, tmp_path):
    out = tmp_path / "ts"
    assert ship_cli(data, "torchscript", out, "--no-speed") == 0
    assert json.loads((out / "manifest.json").read_text())["model_file"] == "model.ts"
    assert len(run_predict(out, data["odd"], block_torch=False)) == 4


@pytest.fixture
def lossy_int8(monkeypatch, tmp_path):
    """Make the fp32 model answer class 2 and "INT8" answer class 0, on an eval set mostly of 2s."""
    model = tiny_model()
    model.describe(class_names=CLASSES)
    with torch.no_grad():
        model.classifier.bias[2] += 50
    checkpoint = save_model(model, tmp_path / "biased.safetensors")
    other = tiny_model()
    with torch.no_grad():
        other.classifier.bias[0] += 50
    monkeypatch.setattr(ship_module, "quantize_onnx",
                        lambda fp32, out, calibration, recipe: export_model(other, out, "onnx").path)
    data = write_images(tmp_path / "eval", seed=2)
    for label in ("0", "1"):
        for extra in sorted((data / label).iterdir())[1:]:
            extra.unlink()
    return {"checkpoint": checkpoint, "calib": write_images(tmp_path / "calib"), "eval": data}


@pytest.mark.slow
def test_a_model_losing_more_than_max_drop_is_not_shipped_and_remedies_are_named(lossy_int8, tmp_path, capsys):
    out = tmp_path / "refused"
    assert ship_cli(lossy_int8, "onnxruntime-int8", out, "--no-speed") == 2
    err = capsys.readouterr().err
    assert "refused to ship efficientnet_b0 as onnxruntime-int8: on " in err
    assert "(fp32 66.67% -> 16.67%, agreement 0.00%) it loses 50.00 top-1 points, more than --max-drop 1" in err
    assert "nothing was written" in err
    for remedy in ("--keep-float stem", "quantization-aware training", "a Lite variant", "--target onnxruntime (fp32)",
                   "--auto-remedy"):
        assert remedy in err
    assert not out.exists() and not list(tmp_path.glob(".effnet-ship-*"))


@pytest.mark.slow
def test_auto_remedy_tries_each_remedy_and_ships_the_first_within_the_drop(lossy_int8, tmp_path, capsys):
    out = tmp_path / "remedied"
    assert ship_cli(lossy_int8, "onnxruntime-int8", out, "--no-speed", "--auto-remedy",
                    "--remedies", "keep-float-stem,fp32") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["not shipped: onnxruntime-int8: it loses 50.00 top-1 points, more than --max-drop 1",
                         "not shipped: onnxruntime-int8, float stem: it loses 50.00 top-1 points, more than "
                         "--max-drop 1"]
    assert lines[2].startswith("shipped efficientnet_b0 as onnxruntime to")
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["target"], manifest["precision"]) == ("onnxruntime", "fp32")
    assert manifest["top1"] == pytest.approx(4 / 6)
    report = (out / "report.md").read_text()
    assert "| onnxruntime-int8 | 16.67 | 50.00 | 0.00 | " in report
    assert "| onnxruntime | 66.67 | 0.00 | 100.00 |" in report


def test_bad_destinations_and_missing_calibration_are_refused_before_any_work(data, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert ship_cli(data, "onnxruntime", taken) == 2
    assert f"{taken} already exists and is not an empty folder" in capsys.readouterr().err
    assert main(["ship", "--checkpoint", str(data["checkpoint"]), "--target", "onnxruntime-int8",
                 "--eval", str(data["eval"]), "--out", str(tmp_path / "new")]) == 2
    assert "needs calibration images: pass --calib DIR" in capsys.readouterr().err
    assert ship_cli(data, "onnxruntime", tmp_path / "missing" / "out") == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_auto_remedy_by_quantization_aware_training_ships_int8(lossy_int8, tmp_path, capsys):
    out = tmp_path / "qat"
    assert ship_cli(lossy_int8, "onnxruntime-int8", out, "--no-speed", "--auto-remedy", "--remedies", "qat",
                    "--qat-epochs", "1") == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("shipped efficientnet_b0 as onnxruntime-int8, QAT, "
                                                              "float stem to")
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["precision"], manifest["quantization"], manifest["keep_float"]) == ("int8", "PT2E QAT", ["stem"])
    assert manifest["agreement"] == 1.0
    assert len(run_predict(out, lossy_int8["eval"])) == 6


def _constant(tmp_path: Path, answer: int) -> Path:
    """A checkpoint whose every answer is class ``answer``: a constant predictor."""
    model = tiny_model()
    model.describe(class_names=CLASSES)
    with torch.no_grad():
        model.classifier.bias[answer] += 50
    return save_model(model, tmp_path / f"constant{answer}.safetensors")


@pytest.mark.slow
def test_a_model_at_chance_level_is_refused_unless_min_top1_says_otherwise(data, tmp_path, capsys):
    checkpoint = _constant(tmp_path, 2)  # 4 of the 12 evaluation images are 2s: top-1 33.33%, chance for 3 classes
    common = ["ship", "--checkpoint", str(checkpoint), "--target", "onnxruntime", "--eval", str(data["eval"]),
              "--no-speed"]
    assert main([*common, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "the fp32 model itself is no better than a constant guess (its top-1 33.33% is below 38.33%, chance " \
           "(33.33% for 3 classes) plus 5 points)" in err
    assert "--min-top1 0 ships it anyway" in err and not (tmp_path / "refused").exists()
    assert main([*common, "--out", str(tmp_path / "shipped"), "--min-top1", "0"]) == 0
    assert json.loads((tmp_path / "shipped" / "manifest.json").read_text())["top1"] == pytest.approx(1 / 3)


@pytest.mark.slow
def test_int8_that_changes_many_answers_is_refused_on_agreement(data, tmp_path, monkeypatch, capsys):
    checkpoint = _constant(tmp_path, 2)
    other = tiny_model()
    with torch.no_grad():
        other.classifier.bias[0] += 50  # "INT8" answers 0 wherever fp32 answers 2: same top-1, no agreement
    monkeypatch.setattr(ship_module, "quantize_onnx",
                        lambda fp32, out, calibration, recipe: export_model(other, out, "onnx").path)
    common = ["ship", "--checkpoint", str(checkpoint), "--target", "onnxruntime-int8", "--calib", str(data["calib"]),
              "--eval", str(data["eval"]), "--no-speed", "--min-top1", "30"]
    assert main([*common, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "(fp32 33.33% -> 33.33%, agreement 0.00%) 100.00% of its answers differ from fp32's (agreement 0.00%, " \
           "below --min-agreement 97%)" in err
    assert "a lower --min-agreement" in err and "it loses" not in err
    assert main([*common, "--out", str(tmp_path / "shipped"), "--min-agreement", "0"]) == 0


def test_a_registry_model_with_an_eval_folder_of_other_classes_is_refused(data, tmp_path, capsys):
    assert main(["ship", "--checkpoint", "efficientnet_lite0", "--target", "onnxruntime", "--eval", str(data["eval"]),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"classes in {data['eval']} differ from the model's classes (1000 classes): missing " in err
    assert "not in the model's classes: 0, 1, 2. The folder needs one class folder per class of the model" in err
    assert "training data" not in err


def test_gate_flags_are_checked(data, tmp_path, capsys):
    for flag, value in (("--min-agreement", "101"), ("--min-top1", "nan"), ("--max-drop", "nan")):
        with pytest.raises(SystemExit) as refused:  # argparse's usage error, before any work
            ship_cli(data, "onnxruntime", tmp_path / "out", flag, value)
        assert refused.value.code == 2
        assert f"argument {flag}: {value!r} is not a finite number in [0, 100]" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_ship_killed_mid_way_leaves_no_folder_and_the_next_ship_removes_its_leftovers(data, tmp_path):
    out = tmp_path / "ship"
    command = [sys.executable, "-m", "effnet", "ship", "--checkpoint", str(data["checkpoint"]), "--target",
               "onnxruntime", "--eval", str(data["eval"]), "--out", str(out), "--no-speed", *UNTRAINED]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    # Killed while the folder is being written (manifest and model there, the reports not yet).
    while not list(tmp_path.glob(f"{ship_module.WORK_PREFIX}*/folder/manifest.json")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.kill()
    process.wait()
    leftovers = list(tmp_path.glob(f"{ship_module.WORK_PREFIX}*"))
    assert len(leftovers) == 1 and not out.exists()
    assert ship_cli(data, "onnxruntime", out, "--no-speed") == 0
    assert not leftovers[0].exists() and not list(tmp_path.glob(f"{ship_module.WORK_PREFIX}*"))
    assert {"manifest.json", "model.onnx", "report.md", "report.html"} <= {p.name for p in out.iterdir()}
