"""Shared by the serving tests: a real server process on free loopback ports (``effnet serve``, or
the torch-free ``effnet-serve``), small shipped folders, photos, and reading metrics."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from skimage import data as skimage_data

import effnet
import effnet_runtime
from effnet.deploy.export import export_model
from helpers.deploy import tiny_model

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60
CLEAN_EXIT = 0
"""A server stopped by SIGTERM has answered its requests in flight and exits 0."""
SOURCES = [str(Path(effnet.__file__).resolve().parents[1]), str(Path(effnet_runtime.__file__).resolve().parents[1])]
WITHOUT_TORCH = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "effnet"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Block())
sys.argv[0] = "effnet-serve"
runpy.run_module("effnet_runtime.serve", run_name="__main__")
"""
"""``effnet-serve`` in this interpreter, where importing torch, torchvision or effnet fails."""
CLASSIFICATION = re.compile(r"^(\d+\.\d{6}):(\d+):(.+)$")
"""Triton's classification string: the score with six decimals, the class index, the label."""
PHOTOS = (("chelsea", "jpg"), ("coffee", "png"), ("astronaut", "png"), ("camera", "png"), ("rocket", "jpg"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """A server in a subprocess on free loopback ports, its output in ``log``: ``python -m effnet
    serve ARGS`` by default; ``torch_free``: ``effnet-serve ARGS`` with torch blocked, or run by
    ``python`` (another environment's interpreter, with its installed effnet-runtime)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None, threads: int = 1,
                 torch_free: bool = False, python: str | None = None, grpc: bool = False) -> None:
        self.port = free_port()
        self.grpc_port = free_port() if grpc else None
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        self.log = log
        environment = {**os.environ, **(env or {})}
        if python is None:
            environment["PYTHONPATH"] = os.pathsep.join(filter(None, [*SOURCES, environment.get("PYTHONPATH")]))
            command = [sys.executable, "-c", WITHOUT_TORCH] if torch_free else [sys.executable, "-m", "effnet", "serve"]
        else:
            environment.pop("PYTHONPATH", None)
            command = [python, "-m", "effnet_runtime.serve"]
        command += [*args, "--port", str(self.port), "--threads", str(threads), "--log-level", "warning"]
        if grpc:
            command += ["--grpc-port", str(self.grpc_port)]
        self.started = time.monotonic()
        with open(log, "wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT_S, in_a_row: int = 1) -> ServerProcess:
        """Poll ``/v2/health/ready`` until it answers 200 ``in_a_row`` times running (with several
        workers, each connection may reach another one); fail with the server's output if it never does."""
        deadline = time.monotonic() + timeout
        ready = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                ready = ready + 1 if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200 else 0
            except httpx.TransportError:
                ready = 0
            if ready >= in_a_row:
                self.ready_s = time.monotonic() - self.started
                return self
            if not ready:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the server was not ready within {timeout} s:\n{self.output()}")

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        """SIGTERM, then wait (and kill after ``STOP_TIMEOUT_S``); the exit code."""
        self.terminate()
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)
            raise AssertionError(f"the server ignored SIGTERM for {STOP_TIMEOUT_S} s:\n{self.output()}") from None


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of sample ``name{labels}`` in Prometheus text (0 when absent)."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


def metric_total(text: str, name: str) -> float:
    """The sum of sample ``name`` over all its label values."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$")
    return sum(float(m.group(2)) for line in text.splitlines() if (m := pattern.match(line)))


_SHIPPED: dict[tuple[tuple[str, ...], int, str], Path] = {}


def ship_tiny(folder: Path, classes: list[str], seed: int = 0, name: str = "tiny_b0") -> Path:
    """A folder as ``effnet ship`` writes it for ONNX Runtime (fp32), of a tiny random network
    (exported once per test session for each set of arguments, then copied)."""
    key = (tuple(classes), seed, name)
    if key in _SHIPPED and _SHIPPED[key].is_dir():
        shutil.copytree(_SHIPPED[key], folder, dirs_exist_ok=True)
        return folder
    _SHIPPED[key] = folder
    torch.manual_seed(seed)
    model = tiny_model(num_classes=len(classes))
    model.describe(class_names=classes)
    folder.mkdir(parents=True, exist_ok=True)
    export_model(model, folder / "model.onnx", "onnx")
    (folder / "manifest.json").write_text(json.dumps({"runtime": "onnxruntime", "model_file": "model.onnx",
                                                      "model_name": name}))
    (folder / "labels.json").write_text(json.dumps(classes))
    (folder / "preprocessing.json").write_text(json.dumps(model.preprocessing.to_dict()))
    return folder


def photos(folder: Path) -> list[Path]:
    """Real photos (scikit-image's), colour and greyscale, JPEG and PNG."""
    paths = []
    for name, suffix in PHOTOS:
        paths.append(folder / f"{name}.{suffix}")
        Image.fromarray(getattr(skimage_data, name)()).save(paths[-1])
    return paths


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
