"""Check an artifact against eager PyTorch: same inputs, largest absolute difference of the logits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .runtime import Runner

FP32_TOLERANCE = 1e-4
MAX_TOLERANCE = 1.0
"""The largest tolerance accepted: beyond, an export whose logits are wrong by whole units would pass."""


class ExportVerificationError(ValueError):
    """An exported artifact does not reproduce the eager model within tolerance."""


@dataclass(frozen=True)
class Verification:
    """The outcome of running an artifact and the eager model on the same inputs."""

    runtime: str
    max_abs_diff: float
    batch_sizes: tuple[int, ...]
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance)

    def describe(self) -> str:
        sizes = ", ".join(str(b) for b in self.batch_sizes)
        verdict = "<=" if self.passed else ">"
        return (f"{self.runtime}: max|diff| {self.max_abs_diff:.2e} {verdict} {self.tolerance:.0e} "
                f"against eager PyTorch (batch sizes {sizes})")


def verification_inputs(input_shape: Sequence[int], batch_sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """Seeded standard-normal batches (like normalized images) of shape ``(b, *input_shape)`` for each ``b``."""
    generator = np.random.default_rng(seed)
    return [generator.standard_normal((b, *input_shape), dtype=np.float32) for b in batch_sizes]


def compare_to_reference(runner: Runner, reference: nn.Module, input_shape: Sequence[int],
                         batch_sizes: Sequence[int] = (2, 1, 3), tolerance: float = FP32_TOLERANCE,
                         seed: int = 0) -> Verification:
    """Run ``runner`` and the eval-mode ``reference`` on the same batches; the largest ``|difference|``.

    Several batch sizes check that a dynamic batch dimension really is dynamic. A runtime that
    fails on an input (e.g. a batch size it was not exported for) raises ExportVerificationError.
    """
    reference.eval()
    worst = 0.0
    for batch in verification_inputs(input_shape, batch_sizes, seed):
        with torch.inference_mode():
            expected = reference(torch.from_numpy(batch)).float().numpy()
        try:
            actual = runner(batch)
        except Exception as error:
            raise ExportVerificationError(
                f"{runner.name} failed on an input of shape {list(batch.shape)}: {error}") from error
        if actual.shape != expected.shape:
            raise ExportVerificationError(
                f"{runner.name} returned shape {list(actual.shape)}, eager PyTorch {list(expected.shape)}")
        diff = float(np.max(np.abs(actual.astype(np.float64) - expected)))
        worst = max(worst, diff if np.isfinite(diff) else float("inf"))
    return Verification(runner.name, worst, tuple(batch_sizes), tolerance)
