"""Shared by the serving tests: a real ``effnet serve`` process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

import effnet

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60
CLEAN_EXIT = (0, -signal.SIGTERM)
"""After a graceful shutdown uvicorn re-raises the SIGTERM it caught, so the process ends by that signal."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``python -m effnet serve ARGS --port P --threads T`` in a subprocess, its output in ``log``."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None, threads: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {**os.environ, **(env or {})}
        source = str(Path(effnet.__file__).resolve().parents[1])
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [source, environment.get("PYTHONPATH")]))
        with open(log, "wb") as output:
            self.process = subprocess.Popen([sys.executable, "-m", "effnet", "serve", *args, "--port", str(self.port),
                                             "--threads", str(threads), "--log-level", "warning"],
                                            stdout=output, stderr=subprocess.STDOUT, env=environment)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT_S, in_a_row: int = 1) -> ServerProcess:
        """Poll ``/healthz`` until it answers 200 ``in_a_row`` times running (with several workers,
        each new connection may reach another one: many answers in a row mean all are warm); fail
        with the server's output if it never does."""
        deadline = time.monotonic() + timeout
        ready = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                ready = ready + 1 if httpx.get(self.url + "/healthz", timeout=2).status_code == 200 else 0
            except httpx.TransportError:
                ready = 0
            if ready >= in_a_row:
                return self
            if not ready:
                time.sleep(0.2)
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
