"""Compare deployed variants of one network: size, speed, top-1 and agreement with fp32."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..bench.measure import LatencyStats, time_rounds
from ..errors import ConfigError
from ..table import format_table
from .runtime import Runner


@dataclass(frozen=True)
class Accuracy:
    """Top-1 on labelled images, the share of predictions equal to the reference's, and how
    close the logits stay to the reference's: signal-to-quantization-noise ratio in dB
    (``10 log10(sum ref^2 / sum (out - ref)^2)``; infinite when identical)."""

    top1: float
    agreement: float
    sqnr_db: float
    count: int


def evaluate_runners(runners: Mapping[str, Runner], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     reference: str) -> dict[str, Accuracy]:
    """Top-1 and agreement with ``runners[reference]`` for every runner, in one pass over ``batches``."""
    if reference not in runners:
        raise ConfigError(f"reference {reference!r} is not among the runners {list(runners)}")
    correct = dict.fromkeys(runners, 0)
    agree = dict.fromkeys(runners, 0)
    noise = dict.fromkeys(runners, 0.0)
    signal = 0.0
    count = 0
    for images, labels in batches:
        batch = images.numpy()
        targets = labels.numpy()
        logits = {name: runner(batch).astype(np.float64) for name, runner in runners.items()}
        expected = logits[reference]
        signal += float((expected ** 2).sum())
        for name, output in logits.items():
            predicted = output.argmax(1)
            correct[name] += int((predicted == targets).sum())
            agree[name] += int((predicted == expected.argmax(1)).sum())
            noise[name] += float(((output - expected) ** 2).sum())
        count += len(targets)
    if count == 0:
        raise ConfigError("no images to evaluate on")
    return {name: Accuracy(correct[name] / count, agree[name] / count, _decibels(signal, noise[name]), count)
            for name in runners}


def collect_logits(runners: Mapping[str, Runner], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every runner's logits (float32, one row per image) and the labels, in one pass over ``batches``
    (for per-image analysis: confusion matrices, the most confident mistakes)."""
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    targets = []
    for images, labels in batches:
        batch = images.numpy()
        for name, runner in runners.items():
            outputs[name].append(runner(batch).astype(np.float32))
        targets.append(labels.numpy())
    if not targets:
        raise ConfigError("no images to evaluate on")
    return {name: np.concatenate(parts) for name, parts in outputs.items()}, np.concatenate(targets)


def accuracy_of(logits: np.ndarray, reference: np.ndarray, targets: np.ndarray) -> Accuracy:
    """:class:`Accuracy` of ``logits`` against the labels and against the ``reference`` logits."""
    output, expected = logits.astype(np.float64), reference.astype(np.float64)
    predicted = output.argmax(1)
    return Accuracy(float((predicted == targets).mean()), float((predicted == expected.argmax(1)).mean()),
                    _decibels(float((expected ** 2).sum()), float(((output - expected) ** 2).sum())), len(targets))


def _decibels(signal: float, noise: float) -> float:
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


@dataclass(frozen=True)
class Speed:
    """Batch-1 latency and batch-N throughput of one runner: median, p10 and p90 over rounds
    timed in turns with the runners it is compared with, and the load average meanwhile."""

    latency: LatencyStats
    throughput: LatencyStats
    load_average: float | None = None

    def throughput_spread(self) -> str:
        """Images per second at the median, with the range its p90 and p10 latencies give."""
        batch, stats = self.throughput.batch_size, self.throughput
        low = f"{batch * 1000 / stats.p90_ms:.1f}"
        high = f"{batch * 1000 / stats.p10_ms:.1f}" if stats.p10_ms else "?"
        return f"{stats.throughput:.1f} ({low}-{high})"


def measure_speeds(runners: Mapping[str, Runner], input_shape: tuple[int, ...], throughput_batch: int = 32,
                   max_seconds: float = 10.0) -> dict[str, Speed]:
    """Batch-1 latency and batch-``throughput_batch`` throughput of every runner on random input,
    the runners timed in turns, round after round, until their ratios to the first one settle
    or ``max_seconds`` pass for each batch size (:func:`effnet.bench.measure.time_rounds`)."""
    generator = np.random.default_rng(0)
    one = generator.standard_normal((1, *input_shape), dtype=np.float32)
    many = generator.standard_normal((throughput_batch, *input_shape), dtype=np.float32)
    reference = next(iter(runners))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    single, batched = (time_rounds({name: (lambda runner=runner, batch=batch: runner(batch))
                                    for name, runner in runners.items()}, reference, max_seconds, pause=0.05)
                       for batch in (one, many))
    return {name: Speed(LatencyStats.from_times(single.seconds[name], 1),
                        LatencyStats.from_times(batched.seconds[name], throughput_batch), load) for name in runners}


@dataclass(frozen=True)
class DeploymentRow:
    """One line of the comparison: a deployed variant and what it costs and keeps."""

    name: str
    file_bytes: int | None
    speed: Speed | None = None
    accuracy: Accuracy | None = None


def file_size(path: str | Path | None) -> int | None:
    return Path(path).stat().st_size if path is not None and Path(path).is_file() else None


def row_headers(rows: Iterable[DeploymentRow]) -> list[str]:
    """Column names of :func:`row_cells`: format, file size, batch-1 latency, batch throughput,
    top-1, agreement with the reference and logit SQNR."""
    batch = next((row.speed.throughput.batch_size for row in rows if row.speed), 32)
    return ["format", "size MB", "latency b1 ms (p10-p90)", f"img/s b{batch} (p10-p90)", "top-1 %", "agreement %",
            "SQNR dB"]


def row_cells(row: DeploymentRow) -> list[str]:
    """One row rounded for reading, under :func:`row_headers`."""
    return [
        row.name,
        f"{row.file_bytes / 1e6:.2f}" if row.file_bytes is not None else "-",
        row.speed.latency.spread() if row.speed else "-",
        row.speed.throughput_spread() if row.speed else "-",
        f"{100 * row.accuracy.top1:.2f}" if row.accuracy else "-",
        f"{100 * row.accuracy.agreement:.2f}" if row.accuracy else "-",
        f"{row.accuracy.sqnr_db:.1f}" if row.accuracy and math.isfinite(row.accuracy.sqnr_db) else "-",
    ]


def format_rows(rows: Iterable[DeploymentRow]) -> str:
    """The comparison as an aligned plain-text table (see :func:`row_headers`)."""
    rows = list(rows)
    return format_table(row_headers(rows), [row_cells(row) for row in rows])
