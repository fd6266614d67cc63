"""Edge files (effnet.deploy.edge) and the edge targets of ``effnet ship``: ExecuTorch ``.pte``
(XNNPACK) and LiteRT ``.tflite``, fp32 and INT8.

The converters are the ``edge`` extra, installed in their own venv (run.sh sets up .venv-edge
and passes its interpreter as EFFNET_EDGE_PYTHON): the slow tests run every conversion once per
session there (tests/helpers/edge_job.py) and check the folders here, in each runtime, against
eager PyTorch; the shipped predict.py runs with torch and effnet blocked.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import effnet
from effnet.deploy.edge import max_relative_difference, symmetric_padding, write_edge
from effnet.errors import ConfigError
from effnet.ship.build import ship
from effnet.ship.plan import ShipOptions
from effnet_runtime import portable
from helpers.deploy import RESOLUTION, tiny_model, write_images

TESTS = Path(__file__).resolve().parents[1]
SOURCES = [Path(effnet.__file__).parents[1], Path(portable.__file__).parents[1], TESTS]
LITE_TARGETS = ("executorch", "executorch-int8", "tflite", "tflite-int8")
# Runs a script with the named top-level packages made unimportable, as on a machine without them.
BLOCKED = """
import runpy, sys
blocked = set(sys.argv[1].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Block())
script = sys.argv[2]
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def edge_python() -> str:
    """The interpreter that has the converters: EFFNET_EDGE_PYTHON (run.sh), or this one."""
    given = os.environ.get("EFFNET_EDGE_PYTHON")
    if given:
        return given
    if all(importlib.util.find_spec(m) for m in ("executorch", "litert_torch", "ai_edge_litert")):
        return sys.executable
    pytest.skip("the edge converters are not installed here: ./run.sh test sets them up (.venv-edge)")


@pytest.fixture(scope="session")
def shipped(tmp_path_factory) -> Path:
    """A folder with the tiny Lite0 shipped to the four edge targets, the tiny B0 to tflite-int8,
    their logits, and the refusal of a network XNNPACK cannot run (see edge_job.py)."""
    root = tmp_path_factory.mktemp("edge")
    write_images(root / "calib")
    write_images(root / "eval", seed=1)
    odd = root / "odd"
    odd.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (37, 61, 3), dtype=np.uint8)).save(odd / "wide.png")
    Image.fromarray(rng.integers(0, 255, (70, 29), dtype=np.uint8), mode="L").save(odd / "tall_grey.png")
    Image.fromarray(rng.integers(0, 255, (45, 45, 4), dtype=np.uint8), mode="RGBA").save(odd / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (52, 40, 3), dtype=np.uint8)).save(odd / "photo.jpg", quality=90)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, SOURCES)), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([edge_python(), str(TESTS / "helpers" / "edge_job.py"), str(root)], env=env,
                          capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-4000:]
    return root


def logits(root: Path, folder: str) -> dict[str, np.ndarray]:
    return dict(np.load(root / f"{folder}.npz"))


def manifest(root: Path, folder: str) -> dict:
    return json.loads((root / folder / "manifest.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(2700)
@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_fp32_files_reproduce_eager_pytorch_in_their_runtime(shipped, target):
    result = logits(shipped, f"efficientnet_lite0-{target}")
    assert max_relative_difference(result["eager"], result["shipped"]) <= 1e-3
    assert (result["eager"].argmax(1) == result["shipped"].argmax(1)).all()
    data = manifest(shipped, f"efficientnet_lite0-{target}")
    assert data["input"] == {"layout": "NCHW", "shape": [1, 3, RESOLUTION, RESOLUTION], "dtype": "float32"}


@pytest.mark.slow
@pytest.mark.timeout(2700)
@pytest.mark.parametrize("target", ["executorch-int8", "tflite-int8"])
def test_int8_files_stay_within_max_drop_and_lite_is_integer_end_to_end(shipped, target):
    data = manifest(shipped, f"efficientnet_lite0-{target}")
    assert data["precision"] == "int8" and data["quantization"].startswith("PT2E static")
    assert 100 * (data["fp32_top1"] - data["top1"]) <= 10 + 1e-9  # --max-drop of edge_job.py
    result = logits(shipped, f"efficientnet_lite0-{target}")
    signal = np.square(result["eager"]).sum() / np.square(result["eager"] - result["shipped"]).sum()
    assert 10 * np.log10(signal) > 15  # INT8, not noise: logit SQNR against eager fp32
    if target == "tflite-int8":
        assert data["input"]["dtype"] == "int8" and data["input"]["scale"] > 0
        assert data["conversion"]["float_ops"] == {}  # Lite: no op computes in float
        assert "Integer end to end" in (shipped / f"efficientnet_lite0-{target}" / "report.md").read_text()
    else:
        assert data["input"]["dtype"] == "float32"  # the delegate (de)quantizes inside


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_b0_int8_tflite_reports_its_float_islands(shipped):
    data = manifest(shipped, "efficientnet_b0-tflite-int8")
    islands = data["conversion"]["float_ops"]
    assert islands["LOGISTIC"] == islands["MUL"] > 0  # SiLU and the SE gate: sigmoid and multiply stay float
    report = (shipped / "efficientnet_b0-tflite-int8" / "report.md").read_text()
    assert f"LOGISTIC x{islands['LOGISTIC']}" in report


@pytest.mark.slow
@pytest.mark.timeout(2700)
@pytest.mark.parametrize("target", LITE_TARGETS)
def test_predict_py_runs_without_effnet_and_matches_the_shipped_model(shipped, target):
    folder = shipped / f"efficientnet_lite0-{target}"
    # LiteRT needs neither torch nor effnet; ExecuTorch's host runtime imports torch (not effnet)
    blocked = "effnet" if target.startswith("executorch") else "torch,torchvision,effnet"
    done = subprocess.run([edge_python(), "-I", "-c", BLOCKED, blocked, str(folder / "predict.py"),
                           str(shipped / "eval"), str(shipped / "odd")], capture_output=True, text=True,
                          timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    result = logits(shipped, folder.name)
    expected = dict(zip(result["files"], result["shipped"].argmax(1), strict=True))
    assert len(rows) == len(expected) == 16
    assert {row["path"]: int(row["class_index"]) for row in rows} == expected


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_an_op_xnnpack_lacks_is_refused_by_name_and_nothing_is_written(shipped):
    refusal = json.loads((shipped / "refusal.json").read_text())
    assert refusal["code"] != 0 and not refusal["written"]
    message = refusal["stderr"].strip().splitlines()[-1]
    assert "XNNPACK delegate cannot run" in message and "aten." in message and "stem" in message
    assert "nothing was written" in message


def test_symmetric_padding_keeps_tf_same_logits_and_the_head_pools_as_before():
    model = tiny_model(padding="same", name="efficientnet_lite0").eval()
    plain = symmetric_padding(model, RESOLUTION)
    assert not any(type(m).__name__ == "Conv2dSame" for m in plain.modules())
    x = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-5)
        features = model.forward_features(x)
        assert torch.equal(model.forward_head(features), model.classifier(features.mean((2, 3))))


def test_int8_tensors_round_trip_with_their_scale_and_zero_point():
    detail = {"dtype": np.int8, "quantization": (0.02, -3)}
    values = np.array([-3.0, -0.011, 0.0, 0.5, 9.0], dtype=np.float32)
    quantized = portable.quantize(values, detail)
    assert quantized.dtype == np.int8 and quantized.tolist() == [-128, -4, -3, 22, 127]  # clipped at both ends
    np.testing.assert_allclose(portable.dequantize(quantized, detail), [-2.5, -0.02, 0.0, 0.5, 2.6], atol=1e-6)


def test_activations_cannot_be_kept_in_float_on_edge_targets(tmp_path):
    with pytest.raises(ConfigError, match="cannot keep them in float"):
        write_edge(tiny_model(), tmp_path / "model.tflite", "litert", torch.zeros(2, 3, RESOLUTION, RESOLUTION),
                   keep_float=("activations",))
    assert not any(tmp_path.iterdir())


def test_edge_targets_without_the_converters_name_the_install_command(tmp_path):
    if importlib.util.find_spec("litert_torch"):
        pytest.skip("the converters are installed in this interpreter")
    model = tiny_model()
    with pytest.raises(ConfigError, match=r"effnet\[edge\]"):
        ship(model, None, write_images(tmp_path / "eval"), tmp_path / "out", ShipOptions(target="tflite"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_pick_measures_edge_candidates_beside_onnxruntime(shipped):
    with open(shipped / "pick" / "pick.csv", newline="") as handle:
        rows = {row["runtime"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"onnxruntime", "executorch"}
    assert rows["executorch"]["status"] == "ok" and float(rows["executorch"]["p50_ms"]) > 0
    assert float(rows["executorch"]["file_mb"]) > 0
    assert rows["executorch"]["top1"] == rows["onnxruntime"]["top1"]  # fp32: the same answers
