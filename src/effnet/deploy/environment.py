"""What a measurement depends on besides the model: the machine and the library versions.

Reports print it beside their figures, and cached measurements are keyed by it, so that a
figure taken on another CPU or with another runtime version is never reused.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

LIBRARIES = ("effnet", "torch", "numpy", "pillow", "onnx", "onnxruntime", "openvino")
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                "amx_tile", "asimd", "sve")
"""The instruction-set extensions that change which kernels the runtimes pick."""


def library_versions() -> dict[str, str]:
    """Installed versions of Python and the libraries a deployment runs on (absent ones omitted)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@cache
def cpu_description() -> dict[str, object]:
    """The CPU's model name, the relevant feature flags it has, and the cores this process may use."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "features": [f for f in CPU_FEATURES if f in flags], "cores": cores,
            "platform": sys.platform}


def describe_cpu() -> str:
    cpu = cpu_description()
    features = ", ".join(cpu["features"]) or "none of " + ", ".join(CPU_FEATURES[:4])
    return f"{cpu['model']}, {cpu['cores']} cores ({features})"
