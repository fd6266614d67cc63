"""The tests whose results depend on the CPU's features, run again as on a CPU with AVX2 only.

x86 CPUs differ in what their int8 and bf16 kernels do: without VNNI, u8 x s8 products are
summed in pairs in 16 bits (and saturate); without native bf16, oneDNN takes other code paths.
Tests marked ``cpu_kinds`` run here on this CPU and, when it has AVX-512, once more in a
subprocess capped with ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN, and so PyTorch's convolutions and
int8 kernels, then use only AVX2 code) and ``ATEN_CPU_CAPABILITY=avx2`` (PyTorch's own
kernels). On an AVX2-only CPU the normal run is that kind already, and the AVX-512 kind cannot be
emulated. ONNX Runtime and OpenVINO pick their kernels themselves and ignore the cap.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from effnet.deploy.environment import cpu_description

TESTS = Path(__file__).resolve().parent
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def _capped(code: str) -> str:
    env = {**os.environ, **AVX2_ONLY}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          timeout=300).stdout.strip()


needs_avx512 = pytest.mark.skipif("avx512f" not in cpu_description()["features"],
                                  reason="this CPU has no AVX-512: the normal run is the AVX2 kind already")


@pytest.mark.slow
@needs_avx512
def test_the_cap_makes_pytorch_and_effnet_see_an_avx2_cpu() -> None:
    seen = _capped("import torch; from effnet.deploy.environment import cpu_description as c, "
                   "int8_kernels_saturate as s; print(torch.backends.cpu.get_cpu_capability(), "
                   "'avx512f' in c()['features'], s(), c()['cap'])")
    assert seen == "AVX2 False True ONEDNN_MAX_CPU_ISA=AVX2"


@needs_avx512
@pytest.mark.slow
def test_cpu_dependent_tests_pass_as_on_an_avx2_cpu(tmp_path: Path) -> None:
    env = {**os.environ, **AVX2_ONLY}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cpu_kinds", "-p", "no:cacheprovider",
               "--basetemp", str(tmp_path / "run"), str(TESTS)]
    result = subprocess.run(command, env=env, cwd=TESTS.parent, capture_output=True, text=True, timeout=1500)
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
    assert result.returncode == 0, tail
    assert " passed" in tail and "deselected" in tail
