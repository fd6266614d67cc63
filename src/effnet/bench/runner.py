"""Run the comparison: each network at each batch size, one row of measurements per run.

A network that runs out of memory (or fails otherwise) gets its reason in its rows and the
others still run, so a long benchmark never ends without a report.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from tqdm import tqdm

from ..accelerate import PreparedModel, prepare_for_inference
from ..errors import ConfigError, first_line
from .measure import LatencyStats, TimingBudget, count_macs, count_params, measure_calls, tensor_bytes
from .peers import BenchModel

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Precisions: fp32, or bf16/fp16 under ``torch.autocast`` (weights stay fp32, as in training)."""
OUT_OF_MEMORY = "out of memory"
FAST_SOURCE = "effnet-fast"
"""The source of the rows timing our networks through :func:`effnet.accelerate.prepare_for_inference`."""
OursRunner = Callable[[nn.Module], tuple[str, Callable[[torch.Tensor], object]]]
"""For one of our networks on the CPU: the name of the path it runs through, and what to call."""


@dataclass(frozen=True)
class BenchSettings:
    """How to run every network: device, batch sizes, precision, layout, compilation, timing.

    ``resolution`` replaces each network's native input size (for quick runs); the published
    top-1 stays the one measured at the native size. ``fast`` adds, after each of our networks'
    rows, rows of the same network through the fast inference path (source ``effnet-fast``:
    BatchNorm folded, fused kernels, CUDA graphs on CUDA, weights in ``dtype``; with ``compile``,
    compiled around the kernels). ``ours``: how our networks run on the CPU in fp32 without
    ``compile`` (``effnet bench`` passes the path chosen for this machine, :mod:`effnet.cpu_path`,
    named in the rows' ``path``); None: as they are.
    """

    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1, 32)
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    resolution: int | None = None
    timing: TimingBudget = field(default_factory=TimingBudget)
    fast: bool = False
    ours: OursRunner | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.resolution is not None and self.resolution < 1:
            raise ConfigError(f"resolution must be positive, got {self.resolution}")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"unknown device {self.device!r}; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} asked for, but CUDA is not available here "
                              f"(torch {torch.__version__}); use --device cpu")
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device {self.device!r} is not supported; use cpu, cuda or cuda:N")


@dataclass(frozen=True)
class BenchRow:
    """One network at one batch size. Sizes are per image; timings are per batch."""

    model: str
    source: str
    device: str
    dtype: str
    batch: int
    resolution: int
    top1: float | None
    params: int | None = None
    macs: int | None = None
    latency: LatencyStats | None = None
    peak_memory: int | None = None
    status: str = "ok"
    path: str = ""
    """How one of our networks ran on the CPU (a path of :mod:`effnet.cpu_path`); empty otherwise."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the device (GPU or host) ran out of memory."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in message.lower()
                                                or "DefaultCPUAllocator" in message)


def failure_status(error: BaseException) -> str:
    """The status a row gets for ``error``: "out of memory", or the error in one line."""
    if is_out_of_memory(error):
        return OUT_OF_MEMORY
    return f"error: {type(error).__name__}: {first_line(error)}"


def run_bench(models: Sequence[BenchModel], settings: BenchSettings = BenchSettings(),
              progress: bool = False) -> list[BenchRow]:
    """Measure every network at every batch size; ``progress`` shows a progress bar on stderr."""
    rows: list[BenchRow] = []
    runs = len(models) + (sum(spec.source == "effnet" for spec in models) if settings.fast else 0)
    with tqdm(total=runs * len(settings.batch_sizes), desc="bench", unit="run",
              disable=not progress, leave=False) as bar:
        for spec in models:
            bar.set_postfix_str(spec.name)
            rows.extend(_bench_model(spec, settings, bar))
            if settings.fast and spec.source == "effnet":
                rows.extend(_bench_model(replace(spec, source=FAST_SOURCE), settings, bar))
    return rows


def _bench_model(spec: BenchModel, settings: BenchSettings, bar: tqdm) -> list[BenchRow]:
    device = torch.device(settings.device)
    resolution = settings.resolution or spec.resolution

    def row(batch: int, **measured: object) -> BenchRow:
        return BenchRow(spec.name, spec.source, str(device), settings.dtype, batch, resolution, spec.top1,
                        **measured)

    try:
        network, runnable, sizes = _build(spec, device, resolution, settings)
    except Exception as error:  # noqa: BLE001 - the reason goes into the report, the others still run
        status = failure_status(error)
    else:
        status = None
    if status is not None:
        _release(device)
        bar.update(len(settings.batch_sizes))
        return [row(batch, status=status) for batch in settings.batch_sizes]

    rows = []
    for batch in settings.batch_sizes:
        try:
            rows.append(row(batch, **sizes, **_time_batch(network, runnable, batch, resolution, device, settings)))
        except Exception as error:  # noqa: BLE001 - as above
            rows.append(row(batch, **sizes, status=failure_status(error)))
        _release(device)
        bar.update(1)
    del network, runnable
    _release(device)
    return rows


def _build(spec: BenchModel, device: torch.device, resolution: int,
           settings: BenchSettings) -> tuple[nn.Module, Callable[[torch.Tensor], object], dict[str, object]]:
    """The network (eval mode, on ``device``), what to call (compiled, prepared, through
    ``settings.ours`` or as it is), params and MACs (and the path ``settings.ours`` named)."""
    network = spec.build().eval()
    sizes: dict[str, object] = {"params": count_params(network), "macs": count_macs(network, resolution)}
    if spec.source == FAST_SOURCE:
        dtype = DTYPES[settings.dtype] or torch.float32
        backend = "inductor" if settings.compile else None
        runnable = prepare_for_inference(network, device, dtype, compile_backend=backend)
        return runnable if isinstance(runnable, PreparedModel) else runnable.module, runnable, sizes
    network = network.to(device)
    if (spec.source == "effnet" and settings.ours is not None and device.type == "cpu" and not settings.compile
            and settings.dtype == "fp32"):
        sizes["path"], runnable = settings.ours(network)
        return network, runnable, sizes
    if settings.channels_last:
        network = network.to(memory_format=torch.channels_last)
    return network, torch.compile(network) if settings.compile else network, sizes


def _time_batch(network: nn.Module, runnable: Callable[[torch.Tensor], object], batch: int, resolution: int,
                device: torch.device, settings: BenchSettings) -> dict[str, object]:
    images = torch.randn(batch, 3, resolution, resolution, device=device)
    if settings.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    dtype = DTYPES[settings.dtype] if not isinstance(network, PreparedModel) else None  # prepared: its own dtype

    def forward() -> None:
        autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        with torch.no_grad(), autocast:
            runnable(images)

    measured = measure_calls(forward, device, settings.timing)
    peak = None if measured.extra_memory is None else tensor_bytes(network, images) + measured.extra_memory
    return {"latency": LatencyStats.from_times(measured.seconds, batch), "peak_memory": peak}


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
