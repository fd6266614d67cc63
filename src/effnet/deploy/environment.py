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

LIBRARIES = ("effnet", "torch", "numpy", "pillow", "onnx", "onnxruntime", "openvino", "executorch", "litert-torch",
             "ai-edge-litert")
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


ONEDNN_ISA_CAPS = {
    "SSE41": (), "AVX": (), "AVX2": ("avx2", "fma"), "AVX2_VNNI": ("avx2", "fma", "avx_vnni"),
    "AVX2_VNNI_2": ("avx2", "fma", "avx_vnni"), "AVX512_CORE": ("avx2", "fma", "avx512f"),
    "AVX512_CORE_VNNI": ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni"),
    "AVX512_CORE_BF16": ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"),
}
"""The x86 features each ``ONEDNN_MAX_CPU_ISA`` level still lets oneDNN use (levels not listed
here, such as ``ALL`` or the AMX ones, cap nothing effnet looks at)."""

INT8_DOT_PRODUCT_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8", "asimd")
"""Features whose int8 dot products accumulate u8 x s8 products in 32 bits. Without them (x86
with AVX2 or plain AVX-512) the kernels add pairs of products in 16 bits, which saturates
for 8-bit activations times 8-bit weights: quantize with 7 bits on one side there."""


@cache
def cpu_description() -> dict[str, object]:
    """The CPU's model name, the relevant feature flags it has, and the cores this process may use.

    ``ONEDNN_MAX_CPU_ISA`` (which makes oneDNN, and so PyTorch's CPU kernels, behave like an
    older CPU) caps the features reported and is named in ``cap``: a figure taken under it is a
    figure of that older CPU.
    """
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
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap in ONEDNN_ISA_CAPS:
        flags = {f for f in flags if f in ONEDNN_ISA_CAPS[cap] or not f.startswith(("avx", "fma", "amx"))}
    return {"model": model, "features": [f for f in CPU_FEATURES if f in flags], "cores": cores,
            "platform": sys.platform, "cap": f"ONEDNN_MAX_CPU_ISA={cap}" if cap in ONEDNN_ISA_CAPS else ""}


def describe_cpu() -> str:
    """One line for reports: the CPU's model, cores and features (and a cap, if one is set)."""
    cpu = cpu_description()
    features = ", ".join(cpu["features"]) or "none of " + ", ".join(CPU_FEATURES[:4])
    cap = f", capped by {cpu['cap']}" if cpu["cap"] else ""
    return f"{cpu['model']}, {cpu['cores']} cores ({features}{cap})"


def int8_kernels_saturate() -> bool:
    """Whether this CPU's int8 convolution kernels can saturate on full-range u8 x s8 inputs.

    True on x86 without VNNI/AMX (AVX2 alone, or AVX-512 without VNNI), where the quantizers
    therefore default to a reduced range; False where products accumulate in 32 bits.
    """
    cpu = cpu_description()
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    return not any(f in cpu["features"] for f in INT8_DOT_PRODUCT_FEATURES)
