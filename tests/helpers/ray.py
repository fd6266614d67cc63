"""What the Ray engine's tests share: the demo digits plus three bad files, a model with
decisive outputs, ``effnet predict``'s own results for them, and the comparison with the output
folder. Built once per test session (under pytest's base temporary folder) and only read."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from effnet import create_model
from effnet.cli import main
from effnet.data.demo import write_demo_dataset
from effnet.weights.io import save_model

BAD_FILES = {"corrupt.png": b"\x89PNG\r\n\x1a\n garbage", "empty.png": b"", "text.jpg": b"a text file, not a picture\n"}
BAD_ERRORS = {"corrupt.png": "corrupt or truncated image", "empty.png": "empty file (0 bytes)",
              "text.jpg": "not an image file (Pillow cannot identify it)"}
"""What each bad file's error says (the start of it)."""
PROBABILITY_TOLERANCE = 1e-5
ACTOR_TITLE = b"ray::MapWorker(MapBatches(BatchPredictor))"


def shared_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``val`` (the 1,000 demo digits), ``bad`` (:data:`BAD_FILES`), ``checkpoint`` (B0 at 64 px
    whose head is scaled so that its top class is clear) and ``reference`` (``effnet predict``'s
    JSON records by path), made by the first module that asks."""
    root = tmp_path_factory.getbasetemp() / "ray_inputs"
    done = root / "reference.json"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        val = write_demo_dataset(root / "demo") / "val"
        bad = root / "bad"
        bad.mkdir()
        for name, data in BAD_FILES.items():
            (bad / name).write_bytes(data)
        model = create_model("efficientnet_b0", num_classes=10, resolution=64)
        with torch.no_grad():  # a random network's logits differ by 1e-4: make its choices clear
            model.classifier.weight.mul_(1e4)
            model.classifier.bias.zero_()
        model.describe(class_names=[f"digit {i}" for i in range(10)])
        checkpoint = save_model(model, root / "b0_64.safetensors")
        out = root / "effnet_predict.json"
        assert main(["predict", str(val), str(bad), "--checkpoint", str(checkpoint), "--format", "json",
                     "--out", str(out), "--no-progress", "--device", "cpu"]) == 1  # the bad files fail
        records = {r["path"]: r for r in json.loads(out.read_text())}
        done.write_text(json.dumps({"val": str(val), "bad": str(bad), "checkpoint": str(checkpoint),
                                    "reference": records}))
    return json.loads(done.read_text())


def output_records(folder: Path) -> list[dict]:
    """Every row of a Parquet output folder, as prediction records."""
    import pyarrow.parquet as pq

    return [row for part in sorted(folder.glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]


def assert_matches_effnet_predict(rows: list[dict], reference: dict[str, dict], model: str = "efficientnet_b0"
                                  ) -> None:
    """One row per input of ``reference``; each image's classes those of ``effnet predict``, its
    probabilities within :data:`PROBABILITY_TOLERANCE`; each bad file's error."""
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows), "a path was written twice"
    assert set(by_path) == set(reference)
    for path, expected in reference.items():
        row = by_path[path]
        assert row["schema_version"] == expected["schema_version"] and row["model"] == model
        if expected["error"] is not None:
            assert row["top_k"] == [] and row["error"].startswith(BAD_ERRORS[Path(path).name]), row
            continue
        assert row["error"] is None
        assert row["top_k"][0]["class_name"] == expected["top_k"][0]["class_name"], path
        np.testing.assert_allclose([c["probability"] for c in row["top_k"]],
                                   [c["probability"] for c in expected["top_k"]], atol=PROBABILITY_TOLERANCE, rtol=0)


def short_temp_dir() -> str:
    """A folder for Ray's session files: its socket paths must stay under 108 bytes, which
    pytest's own temporary folders can exceed."""
    return tempfile.mkdtemp(prefix="ray", dir="/tmp")


@contextlib.contextmanager
def ray_environment() -> Iterator[None]:
    """The environment of a test's Ray: no token file written in the home folder, no usage stats."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        yield


def processes_titled(title: bytes) -> list[int]:
    """The ids of the processes whose command line starts with ``title``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/cmdline").read_bytes().startswith(title):
                found.append(int(entry))
        except OSError:
            continue
    return found


def wait_for(condition, timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` seconds saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.2)


def kill(pid: int) -> None:
    """SIGKILL ``pid`` (gone already is fine)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
