"""Measurements of a network: parameters and multiply-accumulates (static), latency,
throughput and peak memory (by running it)."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError
from ..factory import create_model
from ..model import EfficientNetConfig


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, resolution: int | tuple[int, int], in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass of one image, counted on the meta device.

    ``torch.utils.flop_counter`` reports FLOPs (2 per MAC) for convolutions and matrix
    products; element-wise work (BN, activations, SE gating) is not counted, as in the
    published tables. The model is not touched: a meta-device copy is measured.
    """
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    meta_model = _meta_copy(model).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(torch.empty(1, in_chans, height, width, device="meta"))
    return counter.get_total_flops() // 2


def _meta_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` with every tensor on the meta device (no memory, no time)."""
    memo = {id(t): torch.empty_like(t, device="meta") for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


@dataclass(frozen=True)
class ModelSummary:
    """Size and cost of a network at its native resolution."""

    name: str
    params: int
    macs: int
    resolution: int
    width: float
    depth: float


def summarize(name: str | EfficientNetConfig, num_classes: int = 1000, resolution: int | None = None) -> ModelSummary:
    """Parameters and MACs of a named network (or config), counted without allocating weights,
    at ``resolution`` (default: the model's own input size, ``model.preprocessing.resolution``)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    config = model.config
    size = resolution or model.preprocessing.resolution
    label = name if isinstance(name, str) else model.model_name
    return ModelSummary(label, count_params(model), count_macs(model, size, config.in_chans),
                        size, config.width, config.depth)


# --- time and memory of running a network -------------------------------------------------

@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock time of repeated calls that each process ``batch_size`` images (``p10_ms``:
    None where only the median and p90 were kept)."""

    median_ms: float
    p90_ms: float
    iterations: int
    batch_size: int
    p10_ms: float | None = None

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch_size * 1000.0 / self.median_ms

    @classmethod
    def from_times(cls, seconds: Sequence[float], batch_size: int) -> LatencyStats:
        if not seconds:
            raise ConfigError("no timed calls to summarize")
        ordered = sorted(seconds)
        return cls(1000.0 * statistics.median(ordered), 1000.0 * quantile(ordered, 0.9), len(ordered), batch_size,
                   1000.0 * quantile(ordered, 0.1))

    def spread(self) -> str:
        """The median with its p10-p90 range, in ms."""
        low = f"{self.p10_ms:.2f}" if self.p10_ms is not None else "?"
        return f"{self.median_ms:.2f} ({low}-{self.p90_ms:.2f})"


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of ``values``, interpolating linearly between sorted neighbours."""
    ordered = sorted(values)
    if not ordered:
        raise ConfigError("no values to take a quantile of")
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` to finish (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class TimingBudget:
    """How long to time a call: ``iterations`` timed calls, but stop after ``max_seconds``.

    Warm-up takes up to ``warmup`` calls, ending early once it has used a quarter of
    ``max_seconds`` (the first call, which compiles and allocates, always runs). The timed
    loop always makes ``min_iterations`` calls, so a network slower than the budget (B7 at
    600 px on a laptop CPU) still gets a median and costs about ``min_iterations + 1`` calls.
    """

    warmup: int = 3
    iterations: int = 30
    min_iterations: int = 3
    max_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.warmup < 1 or self.min_iterations < 1 or self.iterations < self.min_iterations:
            raise ConfigError(f"invalid timing budget {self}: need warmup >= 1 and "
                              "iterations >= min_iterations >= 1")
        if self.max_seconds <= 0:
            raise ConfigError(f"max_seconds must be positive, got {self.max_seconds}")


@dataclass(frozen=True)
class CallMeasurement:
    """Seconds of each timed call, and the extra memory the first timed call needed."""

    seconds: list[float]
    extra_memory: int | None


def measure_calls(fn: Callable[[], object], device: torch.device | str = "cpu",
                  budget: TimingBudget = TimingBudget()) -> CallMeasurement:
    """Time calls of ``fn`` after warm-up, within ``budget``; see :func:`extra_memory` for memory.

    Each call is bracketed by device synchronization, so on CUDA it measures the work, not the
    launch. The first timed call also records its peak memory (this costs microseconds, so it
    is timed like the others and no call is spent on memory alone).
    """
    start = time.perf_counter()
    for index in range(budget.warmup):
        if index > 0 and time.perf_counter() - start > budget.max_seconds / 4:
            break
        fn()
        synchronize(device)
    seconds: list[float] = []
    memory: list[int | None] = []

    def first_call() -> None:
        memory.append(extra_memory(fn, device))

    start = time.perf_counter()
    while len(seconds) < budget.iterations and (len(seconds) < budget.min_iterations
                                                or time.perf_counter() - start < budget.max_seconds):
        began = time.perf_counter()
        (fn if seconds else first_call)()
        synchronize(device)
        seconds.append(time.perf_counter() - began)
    return CallMeasurement(seconds, memory[0])


def time_interleaved(calls: Mapping[str, Callable[[], object]], rounds: int = 5, calls_per_round: int = 3,
                     warmup: int = 1, device: torch.device | str = "cpu",
                     pause: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call of several callables, measured in turns so that drift hits all alike.

    Each round runs ``calls_per_round`` calls of every callable, one callable after another (the
    order rotates each round). Comparing medians of these lists gives ratios that hold up on a
    shared or throttling machine, where back-to-back blocks would not. ``pause`` seconds of idle
    time before each block let the thread pools of the runtime just timed stop spinning (ONNX
    Runtime's and OpenMP's workers busy-wait for a while after a call and would take the cores
    from the next callable).
    """
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
        synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if pause:
                time.sleep(pause)
            for _ in range(calls_per_round):
                began = time.perf_counter()
                calls[name]()
                synchronize(device)
                times[name].append(time.perf_counter() - began)
    return times


@dataclass(frozen=True)
class Rounds:
    """Callables timed in turns, round after round: the median seconds of each one's calls in
    each round, and whether the ratios to the reference settled (spread small) before the cap."""

    seconds: dict[str, list[float]]
    settled: bool

    def ratios(self, name: str, reference: str) -> list[float]:
        """``name``'s time over the reference's, one per round (both timed in that round)."""
        return [a / b for a, b in zip(self.seconds[name], self.seconds[reference], strict=True)]


def relative_spread(values: Sequence[float]) -> float:
    """(p90 - p10) / p50: how widely repeated measurements scatter, relative to their median."""
    return (quantile(values, 0.9) - quantile(values, 0.1)) / quantile(values, 0.5)


def time_rounds(calls: Mapping[str, Callable[[], object]], reference: str, max_seconds: float,
                small_spread: float = 0.10, min_rounds: int = 5, round_seconds: float = 0.2,
                pause: float = 0.0) -> Rounds:
    """Time ``calls`` in turns (:func:`time_interleaved`), one round at a time, until the ratio
    of every callable to ``reference`` has a :func:`relative_spread` of at most ``small_spread``
    over at least ``min_rounds`` rounds, or ``max_seconds`` have passed (then ``settled`` is
    False). Each round makes as many calls of each callable as fill about ``round_seconds``."""
    names = list(calls)
    first = time_interleaved(calls, rounds=1, calls_per_round=1, warmup=1, pause=pause)
    per_call = sum(seconds[0] for seconds in first.values())
    calls_per_round = int(min(10, max(1, round_seconds // max(per_call, 1e-9))))
    seconds: dict[str, list[float]] = {name: [] for name in names}
    began = time.perf_counter()
    while True:
        order = names if len(seconds[reference]) % 2 == 0 else names[::-1]
        times = time_interleaved({name: calls[name] for name in order}, rounds=1, calls_per_round=calls_per_round,
                                 warmup=0, pause=pause)
        for name in names:
            seconds[name].append(statistics.median(times[name]))
        rounds = Rounds(seconds, settled=False)
        if len(seconds[reference]) >= min_rounds:
            if all(relative_spread(rounds.ratios(name, reference)) <= small_spread for name in names):
                return Rounds(seconds, settled=True)
            if time.perf_counter() - began >= max_seconds:
                return rounds


def tensor_bytes(*items: nn.Module | torch.Tensor) -> int:
    """Bytes held by tensors and by modules' parameters and buffers."""
    total = 0
    for item in items:
        tensors = [item] if isinstance(item, torch.Tensor) else [*item.parameters(), *item.buffers()]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def extra_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int | None:
    """Peak memory one call of ``fn`` needs beyond what is already allocated, in bytes.

    CUDA: ``torch.cuda.max_memory_allocated`` over the call minus the memory allocated before
    it (exact, for the caching allocator's tensors). CPU: the growth of the process's peak
    resident set over the call (Linux: the high-water mark ``VmHWM`` is reset through
    ``/proc/self/clear_refs``, then read from ``/proc/self/status``). That counts every page the
    call touched, oneDNN scratch space included, but memory the C allocator already holds from
    earlier calls and reuses is not counted again, so it can read a little low. ``None`` where
    it cannot be measured (CPU outside Linux).
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu" or not _reset_peak_rss():
        return None
    before = _status_bytes("VmRSS")
    fn()
    return max(0, _status_bytes("VmHWM") - before)


def resident_memory() -> int | None:
    """The process's resident memory in bytes (Linux), or None where it cannot be read."""
    try:
        return _status_bytes("VmRSS")
    except OSError:
        return None


def release_free_memory() -> None:
    """Hand memory that the C allocator keeps but no longer uses back to the system (glibc's
    ``malloc_trim``), so that resident memory measured next grows by what is allocated then
    instead of reusing pages freed earlier unseen. A no-op without glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field} line")
