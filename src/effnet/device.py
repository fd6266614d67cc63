"""Where and in what precision to run: one device resolver and one AMP table for every part."""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError, first_line

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AMP_MODES = (None, *AMP_DTYPES)


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available (this process's ``local_rank`` GPU), else
    the CPU; anything else (``"cpu"``, ``"cuda"``, ``"cuda:1"``) must be usable here."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
        if resolved.type == "cuda" and resolved.index is None:
            resolved = torch.device("cuda", local_rank)
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError) as error:
        raise ConfigError(f"device {str(device)!r} cannot be used here ({first_line(error)}); "
                          "use 'cpu', or 'auto' for the best one available") from None
    return resolved


def check_amp(amp: str | None) -> str | None:
    if amp not in AMP_MODES:
        raise ConfigError(f"unknown amp {amp!r}; use None (full precision), 'bf16' or 'fp16'")
    return amp


def autocast_context(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``bf16``/``fp16``, or nothing for full precision."""
    if check_amp(amp) is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])
