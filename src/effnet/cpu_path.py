"""The CPU inference path: how an EfficientNet runs on this machine's CPU, chosen by measuring.

Every path computes the plain model's logits, in fp32 within 1e-4 of the largest logit,
except ``prepared-bf16``:

- ``eager``: the model as it is;
- ``channels_last``: the model in the channels_last memory format;
- ``prepared``: :func:`effnet.accelerate.prepare_for_inference` in fp32 (BatchNorm folded,
  fused MBConv blocks, channels_last);
- ``onednn-graph``: BatchNorm folded, traced and frozen once per input shape, run with oneDNN
  Graph fusion (TorchScript's oneDNN fuser: each conv with its bias, activation and residual
  add in one kernel, in oneDNN's blocked layouts);
- ``compiled`` (opt-in): BatchNorm folded, channels_last, ``torch.compile`` (Inductor's CPU
  code generation) once per input shape; its first call per shape compiles for minutes on a
  small machine, so it is never chosen for you;
- ``prepared-bf16`` (opt-in): ``prepared`` in bfloat16, not exact (reported as bf16).

:func:`choose_cpu_path` picks among :data:`MEASURED_PATHS` by a short interleaved measurement
(batch 1 and 8 at the model's resolution; a path whose logits are not within 1e-4 is left
out), once per machine (CPU model, features, cores), library versions, thread count and
architecture. The answer is cached in ``<effnet cache>/cpu_path.json`` under a lock, so two
processes on one machine run the same path: the first measures, the other waits for its
answer. ``EFFNET_CPU_PATH=<path>`` or an explicit path pins it instead.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .accelerate import prepare_for_inference
from .bench.measure import time_interleaved
from .cache_file import CacheFile, cache_key
from .deploy.environment import cpu_description, library_versions
from .errors import ConfigError
from .fuse import fold_batchnorm
from .model import EfficientNet

CPU_PATHS: dict[str, str] = {
    "eager": "the model as it is",
    "channels_last": "the model in the channels_last memory format",
    "prepared": "BatchNorm folded, fused MBConv blocks, channels_last (effnet.accelerate)",
    "onednn-graph": "BatchNorm folded, traced per input shape, oneDNN Graph fusion",
    "compiled": "BatchNorm folded, channels_last, torch.compile (Inductor) per input shape",
    "prepared-bf16": "the prepared path in bfloat16 (not exact)",
}
MEASURED_PATHS = ("eager", "channels_last", "prepared", "onednn-graph")
"""The exact paths that start within seconds: the ones :func:`choose_cpu_path` measures."""
PIN_VARIABLE = "EFFNET_CPU_PATH"
TOLERANCE = 1e-4
"""Largest difference from the plain model's logits, relative to the largest logit, of an exact path."""
MEASURED_BATCHES = (1, 8)
"""The batch sizes a choice is measured at (at the model's resolution); a larger one only when
its rounds would take less than :data:`LARGER_BATCH_SECONDS` (B8 or L2 on two cores: batch 1 alone)."""
MEASURE_SECONDS = 4.0
"""About how long the timed rounds of a choice last (the paths' warm-up comes on top)."""
MIN_ROUNDS, MAX_ROUNDS = 3, 15
LARGER_BATCH_SECONDS = 30.0
"""The most seconds the warm-up and rounds of a larger batch size may be expected to take."""
CACHE_VERSION = 1
Logits = Callable[[torch.Tensor], torch.Tensor]


def precision_of(path: str) -> str:
    """``bf16`` for the bfloat16 path, ``fp32`` for the others."""
    return "bf16" if path.endswith("bf16") else "fp32"


def check_path(path: str) -> str:
    if path not in CPU_PATHS:
        raise ConfigError(f"unknown CPU path {path!r}; choose one of {', '.join(CPU_PATHS)} "
                          f"(or leave it unset to use the one measured fastest on this machine)")
    return path


class OneDnnGraphRunner:
    """Runs a BatchNorm-folded network traced and frozen per input shape, with oneDNN Graph
    fusion on while it runs. Past ``max_shapes`` shapes, new ones run the folded network as it is."""

    def __init__(self, model: nn.Module, max_shapes: int = 8) -> None:
        self.network = fold_batchnorm(model).requires_grad_(False)
        self.max_shapes = max_shapes
        self.traced: dict[tuple[tuple[int, ...], torch.dtype], torch.jit.ScriptModule] = {}
        self._lock = threading.Lock()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float().contiguous()
        key = (tuple(images.shape), images.dtype)
        with torch.no_grad(), _onednn_fusion():
            traced = self.traced.get(key)
            if traced is None:
                with self._lock:
                    if len(self.traced) >= self.max_shapes:
                        return self.network(images)
                    traced = self.traced.get(key) or self._trace(images)
                    self.traced[key] = traced
            return traced(images)

    def _trace(self, images: torch.Tensor) -> torch.jit.ScriptModule:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream; the path is only taken where it runs and wins
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(self.network, images, check_trace=False))
            for _ in range(2):  # the profiling runs, after which the fused graph is used
                traced(images)
        return traced


@contextlib.contextmanager
def _onednn_fusion() -> Iterator[None]:
    enabled = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(enabled)


class _ChannelsLast(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.contiguous(memory_format=torch.channels_last))


def build_cpu_path(model: EfficientNet, path: str) -> Logits:
    """A callable computing ``model``'s fp32 logits of a float NCHW batch through ``path``
    (``model`` is left as it is: every path but ``eager`` runs its own copy)."""
    check_path(path)
    model = model.eval()
    if path == "eager":
        return model
    if path == "channels_last":
        return _ChannelsLast(_copy(model)).eval()
    if path == "prepared":
        return prepare_for_inference(model, "cpu", torch.float32)
    if path == "prepared-bf16":
        return prepare_for_inference(model, "cpu", torch.bfloat16)
    if path == "onednn-graph":
        return OneDnnGraphRunner(model)
    folded = _ChannelsLast(fold_batchnorm(model).requires_grad_(False)).eval()
    return torch.compile(folded, dynamic=False)


def _copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).requires_grad_(False)


@dataclass(frozen=True)
class CpuPathChoice:
    """The path a model runs on this CPU, and how it was decided: ``pinned`` (an argument or
    ``EFFNET_CPU_PATH``), ``measured`` (now) or ``cached`` (measured earlier on this machine).
    ``relative_time``: each measured path's time over eager's (geometric mean over the batches)."""

    path: str
    how: str
    relative_time: dict[str, float]
    load_average: float | None = None

    @property
    def precision(self) -> str:
        return precision_of(self.path)

    def describe(self) -> str:
        if self.how == "pinned":
            return f"CPU path {self.path} ({self.precision}, pinned)"
        times = ", ".join(f"{name} {ratio:.2f}x" for name, ratio in sorted(self.relative_time.items(),
                                                                            key=lambda item: item[1]))
        load = f", load average {self.load_average:.1f}" if self.load_average is not None else ""
        return f"CPU path {self.path} ({self.how} on this machine: time relative to eager {times}{load})"


def cache_path(cache_dir: str | Path | None = None) -> Path:
    from .weights.hub import cache_home

    return Path(cache_dir or cache_home()) / "cpu_path.json"


def _check_record(record: dict) -> str | None:
    if record.get("path") not in MEASURED_PATHS:
        return f"path {record.get('path')!r} is not one of {', '.join(MEASURED_PATHS)}"
    times = record.get("relative_time")
    if not isinstance(times, dict) or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                              for v in times.values()):
        return "relative_time is not a mapping of positive numbers"
    return None


def machine_key(model: EfficientNet, threads: int) -> str:
    """What a choice depends on: the machine, the library versions, the threads and the architecture."""
    architecture = {**asdict(model.config), "num_classes": model.num_classes,
                    "resolution": model.preprocessing.resolution}
    return cache_key(CACHE_VERSION, cpu_description(), library_versions(), threads, architecture)


def choose_cpu_path(model: EfficientNet, pinned: str | None = None, cache_dir: str | Path | None = None,
                    measure: Callable[[EfficientNet], dict[str, float]] | None = None) -> CpuPathChoice:
    """The CPU path for ``model``: ``pinned``, else ``$EFFNET_CPU_PATH``, else the cached or newly
    measured fastest of :data:`MEASURED_PATHS` (see the module docstring). ``measure`` replaces
    :func:`measure_paths` (tests)."""
    pinned = pinned or os.environ.get(PIN_VARIABLE) or None
    if pinned is not None:
        return CpuPathChoice(check_path(pinned), "pinned", {})
    cache = CacheFile(cache_path(cache_dir), _check_record)
    key = machine_key(model, torch.get_num_threads())
    with cache.locked():
        record = cache.read().get(key)
        if record is not None:
            return CpuPathChoice(record["path"], "cached", record["relative_time"], record.get("load_average"))
        relative = (measure or measure_paths)(model)
        fastest = min(relative, key=relative.get)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        cache.put(key, {"path": fastest, "relative_time": relative, "load_average": load,
                        "model": model.model_name, "measured": time.strftime("%Y-%m-%d %H:%M:%S")})
    return CpuPathChoice(fastest, "measured", relative, load)


def logits_difference(expected: torch.Tensor, got: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest absolute logit."""
    return float((got.float() - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def measure_paths(model: EfficientNet, paths: tuple[str, ...] = MEASURED_PATHS,
                  seconds: float = MEASURE_SECONDS) -> dict[str, float]:
    """Each exact path's time relative to eager's: the median of interleaved calls per batch
    size (:data:`MEASURED_BATCHES`), combined by geometric mean. A path that fails or whose
    logits differ by more than :data:`TOLERANCE` is left out with a warning."""
    resolution = model.preprocessing.resolution
    generator = torch.Generator().manual_seed(0)
    check = torch.randn(2, 3, resolution, resolution, generator=generator)
    runners: dict[str, Logits] = {}
    with torch.inference_mode():
        expected = model.eval()(check)
        for path in paths:
            try:
                runner = build_cpu_path(model, path)
                difference = logits_difference(expected, runner(check))
            except Exception as error:  # noqa: BLE001 - a path this machine cannot run is not chosen
                warnings.warn(f"CPU path {path} left out: it fails here ({type(error).__name__}: {error})",
                              RuntimeWarning, stacklevel=2)
                continue
            if difference > TOLERANCE:
                warnings.warn(f"CPU path {path} left out: its logits differ from the model's by {difference:.1e} "
                              f"of the largest (more than {TOLERANCE:g})", RuntimeWarning, stacklevel=2)
                continue
            runners[path] = runner
        logs: dict[str, list[float]] = {path: [] for path in runners}
        per_image = 0.0  # seconds of one image through every path, from the previous batch size
        for batch in MEASURED_BATCHES:
            if batch * per_image * (MIN_ROUNDS + 2) > LARGER_BATCH_SECONDS:
                break  # a large network: its warm-up and rounds at this batch would take minutes
            images = torch.randn(batch, 3, resolution, resolution, generator=generator)
            calls = {path: (lambda runner=runner, images=images: runner(images)) for path, runner in runners.items()}
            first = time_interleaved(calls, rounds=1, calls_per_round=1, warmup=1)  # warm-up, then one round
            per_round = sum(seconds_each[0] for seconds_each in first.values())
            per_image = per_round / batch
            rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, seconds / len(MEASURED_BATCHES) / max(per_round, 1e-6))))
            times = time_interleaved(calls, rounds=rounds, calls_per_round=1, warmup=0)
            for path, seconds_each in times.items():
                logs[path].append(math.log(statistics.median(seconds_each) / statistics.median(times["eager"])))
    return {path: math.exp(statistics.fmean(values)) for path, values in logs.items()}
