"""The code passes the linter (ruff, its rules in pyproject.toml) and the public API passes the
type checker (mypy, the modules listed under ``[tool.mypy]`` in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_code_passes_ruff() -> None:
    result = _run("ruff", "check", "--no-cache", "src", "tests", "packages", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_public_api_passes_mypy() -> None:
    result = _run("mypy")  # the files and settings of pyproject.toml's [tool.mypy]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
