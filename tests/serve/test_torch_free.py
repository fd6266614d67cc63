"""The torch-free server, installed as a user would: a fresh virtual environment without PyTorch
(made once per test session, ``pip install ./packages/effnet-runtime[serve,grpc,onnxruntime]``),
serving a shipped folder to tritonclient's HTTP and gRPC clients and to ``/v1``. It answers
exactly as ``effnet serve`` does with the same folder (the same code), and as ``effnet serve``
does with the checkpoint it was exported from (to the preprocessing's rounding); its process
never maps libtorch and stays small."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import effnet_runtime
from effnet.weights.io import save_model
from helpers.deploy import tiny_model
from helpers.serve import CLASSIFICATION, CLEAN_EXIT, ServerProcess, photos, ship_tiny

pytestmark = pytest.mark.slow
PACKAGE = Path(effnet_runtime.__file__).resolve().parents[2]
CLASSES = ["circle", "square", "stripes"]
INSTALL_TIMEOUT_S = 600
OFFLINE_SIGNS = ("Temporary failure in name resolution", "Network is unreachable", "No matching distribution",
                 "Could not find a version", "Connection refused", "Max retries exceeded")
RSS_LIMIT_MB = 300


def _package_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in PACKAGE.rglob("*") if p.is_file() and "egg-info" not in str(p)
                       and not {"__pycache__", "build"} & set(p.relative_to(PACKAGE).parts)):
        digest.update(str(path.relative_to(PACKAGE)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def venv() -> Path:
    """A virtual environment with effnet-runtime[serve,grpc,onnxruntime] and without PyTorch, kept
    (in the temporary folder, keyed by the package's content) for later sessions."""
    target = Path(tempfile.gettempdir()) / f"effnet-runtime-venv-{_package_hash()}"
    python = target / "bin" / "python"
    if python.exists():
        return python
    staging = Path(tempfile.mkdtemp(prefix="effnet-runtime-venv-"))
    shutil.rmtree(staging)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(staging)], check=True, timeout=120)
    with tempfile.TemporaryDirectory() as copy:  # pip builds in the source folder: not in the checkout
        source = shutil.copytree(PACKAGE, Path(copy) / PACKAGE.name,
                                 ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        install = subprocess.run([sys.executable, "-m", "pip", "--python", str(staging / "bin" / "python"),
                                  "install", "--quiet", f"{source}[serve,grpc,onnxruntime]"],
                                 capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if install.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        if any(sign in install.stderr for sign in OFFLINE_SIGNS):
            pytest.skip(f"the package index is unreachable, so no environment can be made: {install.stderr[-300:]}")
        raise AssertionError(f"pip could not install effnet-runtime:\n{install.stderr[-3000:]}")
    try:
        staging.rename(target)
    except OSError:  # another session made it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return python


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch-free")
    torch.manual_seed(0)
    model = tiny_model(num_classes=len(CLASSES))
    model.describe(class_names=CLASSES)
    return {"folder": folder, "checkpoint": save_model(model, folder / "tiny.safetensors"),
            "artifact": ship_tiny(folder / "shipped", CLASSES), "photos": photos(folder)}


def test_the_environment_has_no_pytorch(venv):
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    for module in ("torch", "torchvision", "effnet"):
        found = subprocess.run([str(venv), "-c", f"import {module}"], capture_output=True, text=True, timeout=60,
                               env=environment)
        assert found.returncode != 0 and "ModuleNotFoundError" in found.stderr, module
    assert (venv.parent / "effnet-serve").exists()


def ask(server: ServerProcess, pictures: list[Path]) -> dict[str, np.ndarray]:
    """The same questions to a server: /v1 top-3, /v2 over HTTP (binary) and gRPC (classification)."""
    encoded = np.array([path.read_bytes() for path in pictures], dtype=object)
    answers = {}
    v1 = httpx.post(server.url + "/v1/predict", params={"top_k": 3}, timeout=60,
                    files=[("file", (p.name, p.read_bytes(), "image/png")) for p in pictures]).json()
    answers["v1"] = np.array([[c["probability"] for c in p["top_k"]] for p in v1["predictions"]])
    http = httpclient.InferenceServerClient(server.address)
    image = httpclient.InferInput("image", [len(pictures)], "BYTES")
    image.set_data_from_numpy(encoded)
    answers["http"] = http.infer("tiny_b0", [image]).as_numpy("probabilities")
    grpc = grpcclient.InferenceServerClient(server.grpc_address)
    image = grpcclient.InferInput("image", [len(pictures)], "BYTES")
    image.set_data_from_numpy(encoded)
    output = grpcclient.InferRequestedOutput("probabilities", class_count=2)
    answers["classes"] = grpc.infer("tiny_b0", [image], outputs=[output]).as_numpy("probabilities")
    return answers


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def test_answers_as_the_torch_server_without_loading_torch(venv, files):
    torch_free = ServerProcess(["--artifact", str(files["artifact"])], files["folder"] / "free.log", python=str(venv),
                               grpc=True).wait_ready()
    try:
        maps = Path(f"/proc/{torch_free.process.pid}/maps").read_text()
        free = ask(torch_free, files["photos"])
        rss = resident_mb(torch_free.process.pid)
    finally:
        assert torch_free.stop() == CLEAN_EXIT, torch_free.output()
    assert "libtorch" not in maps and "onnxruntime" in maps
    assert rss < RSS_LIMIT_MB, f"{rss:.0f} MB resident"
    assert "Traceback" not in torch_free.output()
    same_folder = ServerProcess(["--artifact", str(files["artifact"])], files["folder"] / "torch.log",
                                grpc=True).wait_ready()
    checkpoint = ServerProcess(["--checkpoint", str(files["checkpoint"])], files["folder"] / "checkpoint.log",
                               grpc=True)
    try:
        with_torch = ask(same_folder, files["photos"])
        checkpoint.wait_ready()
        encoded = np.array([path.read_bytes() for path in files["photos"]], dtype=object)
        client = httpclient.InferenceServerClient(checkpoint.address)
        image = httpclient.InferInput("image", [len(encoded)], "BYTES")
        image.set_data_from_numpy(encoded)
        eager = client.infer("efficientnet_b0", [image]).as_numpy("probabilities")
    finally:
        assert same_folder.stop() == CLEAN_EXIT and checkpoint.stop() == CLEAN_EXIT
    for key in ("v1", "http"):
        np.testing.assert_array_equal(free[key], with_torch[key])
    np.testing.assert_array_equal(free["classes"], with_torch["classes"])
    assert all(CLASSIFICATION.match(item.decode()) for item in free["classes"].reshape(-1))
    np.testing.assert_allclose(free["http"], eager, atol=2e-3)  # numpy + Pillow against torchvision, ONNX against eager
    assert (free["http"].argmax(1) == eager.argmax(1)).all()
    print(f"torch-free server ready in {torch_free.ready_s:.2f} s, {rss:.0f} MB resident after the requests "
          f"(load average {os.getloadavg()[0]:.1f})")
