"""``effnet pick``: which variant, in which runtime and precision, is the most accurate one that
meets a latency (and memory, file size) budget on this machine.

Every candidate (variant x runtime) is measured here against one reference, torchvision's B0
exported the plain way and run in ONNX Runtime fp32 at the same batch size, the two timed in
turns, round after round (:func:`effnet.bench.measure.time_rounds`), so that load from other
processes hits both alike. How much to trust each figure is measured too:

- rounds go on until the candidate's ratio to the reference settles, its spread
  ``(p90 - p10) / p50`` over the rounds at most :data:`SMALL_SPREAD`, after at least
  :data:`MIN_ROUNDS` rounds, or until the cap (``max_seconds``);
- before measuring, the reference runs alone for a second: if its p90/p10 is over
  :data:`BUSY_SPREAD` or its median over :data:`BUSY_MEDIAN_OVER_BEST` times its best, the
  machine is busy: pick says so first and measures up to :data:`BUSY_CAP_FACTOR` times longer;
- a candidate whose p10-p90 interval, in the budget's unit (ms, or the ratio to the
  reference), contains the budget is *uncertain*: neither picked nor counted over the budget.

The time is bounded three ways: variants of a family are measured smallest first and, once one
is surely over the latency budget in a runtime, the larger ones are skipped there; each
measurement is capped; and measurements are cached (:mod:`effnet.pick.cache`), so any budget
is answered from the cache for what was measured.

Weights are random (latency does not depend on them); the expected top-1 is the published
ImageNet top-1 of the variant's default pretrained weights (effnet.weights.sources), an fp32
figure: the INT8 and bf16 candidates' own accuracy is not measured then (the report labels it
so, beside the publisher's INT8 drop where one is known). With checkpoints and an evaluation
folder instead, the candidates are those trained models, and every candidate's top-1 is
measured on the user's images in its own runtime and precision (INT8 calibrated on ``calib_dir``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..bench.measure import (
    quantile,
    release_free_memory,
    resident_memory,
    tensor_bytes,
    time_interleaved,
    time_rounds,
)
from ..bench.peers import published_top1
from ..bench.runner import failure_status
from ..deploy.compare import collect_logits
from ..deploy.runtime import Runner, onnx_runner, torch_runner
from ..errors import ConfigError
from ..factory import create_model
from ..registry import get_entry, list_models
from .cache import Candidate, Measurement, MeasurementCache, precision_of

EDGE_CANDIDATES = {"executorch": "executorch", "executorch-int8": "executorch", "tflite": "litert",
                   "tflite-int8": "litert"}
"""The edge candidates (the ``edge`` extra, :mod:`effnet.deploy.edge`) and the runtime of each."""
RUNTIMES = ("eager", "compile", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16", "openvino-int8",
            *EDGE_CANDIDATES)
DEFAULT_RUNTIMES = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16", "openvino-int8")
FAMILIES = {"v1": "efficientnet_b", "lite": "efficientnet_lite", "v2": "efficientnet_v2_"}
DEFAULT_FAMILIES = ("v1", "lite")
V1_LARGEST = 7
"""B8 and L2 are research-scale (672 and 800 px); pick stops at B7."""
REFERENCE = "torchvision efficientnet_b0, onnxruntime fp32"
REFERENCE_RESOLUTION = 224
SMALL_SPREAD = 0.10
"""A candidate's ratio to the reference has settled once (p90 - p10) / p50 over the rounds is at most this."""
MIN_ROUNDS = 5
"""Rounds every candidate gets before its spread may count as settled."""
BUSY_SPREAD = 1.3
"""The machine is busy when the reference alone has p90 / p10 over this ..."""
BUSY_MEDIAN_OVER_BEST = 1.2
"""... or a median over this many times its best call."""
BUSY_CAP_FACTOR = 3
"""On a busy machine each measurement may last this many times ``max_seconds``."""
VERDICTS = ("fits", "uncertain", "over")


def family_variants(family: str) -> list[str]:
    """The variants of a family, smallest first (B0..B7, Lite0..Lite4, V2-B0..XL)."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    prefix = FAMILIES[family]
    names = [n for n in list_models() if n.startswith(prefix) and n[len(prefix):][:1].isalnum()]
    if family == "v1":
        names = [n for n in names if n[len(prefix):].isdigit() and int(n[len(prefix):]) <= V1_LARGEST]
    if not names:
        raise ConfigError(f"no {family} variants in this version of effnet; choose from "
                          f"{', '.join(f for f in FAMILIES if f != family)}")
    return names  # the registry lists each family smallest first


@dataclass(frozen=True)
class PickRow:
    """One candidate: its expected top-1, its measurement (None when skipped, unavailable or
    failed, with ``status`` saying why), and the decision: ``verdict`` is ``fits`` (surely within
    every budget), ``uncertain`` (its latency interval contains the budget, or its memory was not
    measured under a memory budget) or ``over``."""

    candidate: Candidate
    top1: float | None
    measurement: Measurement | None = None
    status: str = "ok"
    cached: bool = False
    pareto: bool = False
    verdict: str = ""

    @property
    def ok(self) -> bool:
        return self.measurement is not None and self.status == "ok"

    @property
    def fits(self) -> bool:
        return self.verdict == "fits"


@dataclass(frozen=True)
class PickSettings:
    """The budget and how to measure. The latency budget is one of: milliseconds per batch
    (``max_latency_ms``), or relative to the reference timed in the same rounds as each
    candidate (``max_latency_ratio``: 1.0 is as fast as torchvision's B0 in ONNX Runtime fp32),
    which holds better on a busy machine. The decision, the table and the plot all use that
    unit. ``resolution`` replaces every variant's native input size (quick runs; the published
    top-1 stays the native one)."""

    max_latency_ms: float | None = None
    max_latency_ratio: float | None = None
    batch: int = 1
    max_memory_mb: float | None = None
    max_file_mb: float | None = None
    families: tuple[str, ...] = DEFAULT_FAMILIES
    models: tuple[str, ...] | None = None
    runtimes: tuple[str, ...] = DEFAULT_RUNTIMES
    max_seconds: float = 4.0
    threads: int | None = None
    resolution: int | None = None
    cache_dir: Path | None = None
    refresh: bool = False
    checkpoints: tuple[str, ...] = ()
    eval_dir: Path | None = None
    calib_dir: Path | None = None

    def __post_init__(self) -> None:
        if (self.max_latency_ms is None) == (self.max_latency_ratio is None):
            raise ConfigError("give one latency budget: --max-latency-ms MS, or --max-latency-ratio R (relative to "
                              "torchvision's B0 in ONNX Runtime fp32, measured alongside), not both: the decision, "
                              "the table and the plot use its unit")
        for name, value in (("--max-latency-ms", self.max_latency_ms), ("--max-latency-ratio", self.max_latency_ratio),
                            ("--max-memory-mb", self.max_memory_mb), ("--max-file-mb", self.max_file_mb),
                            ("--max-seconds", self.max_seconds)):
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if self.batch < 1:
            raise ConfigError(f"--batch must be at least 1, got {self.batch}")
        unknown = sorted(set(self.runtimes) - set(RUNTIMES))
        if unknown or not self.runtimes:
            raise ConfigError(f"unknown runtime {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(RUNTIMES)}")
        for name in self.models or ():
            get_entry(name)
        if self.checkpoints and self.eval_dir is None:
            raise ConfigError("--checkpoint candidates are ranked by their top-1 on your images: pass --eval DIR")
        if self.eval_dir is not None and not self.checkpoints:
            raise ConfigError("--eval measures the top-1 of trained models: pass them with --checkpoint")
        if self.checkpoints and self.resolution:
            raise ConfigError("--resolution applies to random-weight variants, not to checkpoints")
        if self.checkpoints and self.calib_dir is None and any(precision_of(r) == "int8" for r in self.runtimes):
            raise ConfigError("INT8 candidates of checkpoints need calibration images: pass --calib DIR")

    @property
    def unit(self) -> str:
        """The latency budget's unit: ``ms``, or ``x ref`` (the ratio to the reference)."""
        return "ms" if self.max_latency_ms is not None else "x ref"

    @property
    def budget(self) -> float:
        return self.max_latency_ms if self.max_latency_ms is not None else self.max_latency_ratio

    def interval(self, measurement: Measurement) -> tuple[float, float, float]:
        """The p10, p50 and p90 of ``measurement`` in the budget's unit."""
        m = measurement
        if self.unit == "ms":
            return m.p10_ms, m.p50_ms, m.p90_ms
        return m.ratio_p10, m.ratio_p50, m.ratio_p90

    def latency_verdict(self, measurement: Measurement) -> str:
        """``fits`` when the whole p10-p90 interval is within the budget, ``over`` when it is all
        beyond, ``uncertain`` when it straddles the budget."""
        low, _, high = self.interval(measurement)
        return "fits" if high <= self.budget else "over" if low > self.budget else "uncertain"

    def describe_latency(self) -> str:
        budget = f"{self.max_latency_ms:g} ms" if self.unit == "ms" else f"{self.max_latency_ratio:g}x the reference"
        return f"{budget} at batch {self.batch}"

    def describe_budget(self) -> str:
        return self.describe_latency() + (
            f", {self.max_memory_mb:g} MB of memory" if self.max_memory_mb else "") + (
            f", {self.max_file_mb:g} MB of file" if self.max_file_mb else "")

    def variants(self) -> list[list[str]]:
        """Groups of siblings, smallest first: one per family, or the models or checkpoints asked for."""
        if self.checkpoints:
            return [list(self.checkpoints)]
        if self.models:
            return [list(self.models)]
        return [family_variants(f) for f in self.families]


@dataclass(frozen=True)
class MachineCheck:
    """The reference timed alone before measuring: how widely its calls scatter (p90 / p10), how
    far its median is from its best call, and the load average, which together say whether the
    machine is busy (see the module docstring)."""

    spread: float
    median_over_best: float
    load_average: float | None
    cores: int

    @property
    def busy(self) -> bool:
        return self.spread > BUSY_SPREAD or self.median_over_best > BUSY_MEDIAN_OVER_BEST

    def describe(self) -> str:
        load = f"load average {self.load_average:.1f} on {self.cores} cores, " if self.load_average is not None else ""
        figures = (f"{load}the reference's p90/p10 {self.spread:.2f} (busy over {BUSY_SPREAD:g}), its median "
                   f"{self.median_over_best:.2f}x its best (busy over {BUSY_MEDIAN_OVER_BEST:g})")
        if self.busy:
            return (f"The machine is busy ({figures}): each candidate is measured up to {BUSY_CAP_FACTOR}x longer, "
                    "a candidate whose p10-p90 straddles the budget is marked uncertain, and the milliseconds are "
                    "slower than on a quiet machine (the ratios to the reference hold better).")
        return f"The machine is quiet enough ({figures})."


def check_machine(reference: Callable[[], object], seconds: float = 1.0) -> MachineCheck:
    """Time ``reference`` alone for about ``seconds`` (10 calls at least, 50 at most)."""
    times = time_interleaved({"reference": reference}, rounds=1, calls_per_round=10, warmup=1)["reference"]
    while sum(times) < seconds and len(times) < 50:
        times += time_interleaved({"reference": reference}, rounds=1, calls_per_round=5, warmup=0)["reference"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return MachineCheck(quantile(times, 0.9) / quantile(times, 0.1), quantile(times, 0.5) / min(times), load,
                        os.cpu_count() or 1)


@dataclass
class PickResult:
    settings: PickSettings
    rows: list[PickRow]
    pick: PickRow | None
    measured: int
    from_cache: int
    machine: MachineCheck | None = None
    """The check made before measuring (None: everything came from the cache)."""

    def reference_ms(self) -> float | None:
        values = [r.measurement.reference_p50_ms for r in self.rows if r.ok]
        return float(np.median(values)) if values else None

    def closest(self) -> PickRow | None:
        """The measured candidate nearest to the latency budget from below: the fastest in its unit."""
        return min((r for r in self.rows if r.ok), key=lambda r: self.settings.interval(r.measurement)[1],
                   default=None)

    def sentence(self) -> str:
        """The pick, or why there is none and the closest candidate, in one or two sentences."""
        s = self.settings
        if self.pick is None:
            closest = self.closest()
            uncertain = [r for r in self.rows if r.verdict == "uncertain"]
            hint = (f"; the closest is {closest.candidate.model} in {closest.candidate.runtime} at "
                    f"{describe_interval(s, closest.measurement)}" + (
                        "" if closest.verdict != "over" or s.interval(closest.measurement)[0] <= s.budget
                        else " (over the budget)") if closest else "")
            maybe = (f". Uncertain (their p10-p90 straddles the budget, measure on a quieter machine or longer with "
                     f"--max-seconds): {', '.join(f'{r.candidate.model} in {r.candidate.runtime}' for r in uncertain)}"
                     if uncertain else "")
            return f"No candidate is surely within {s.describe_budget()} on this machine{hint}{maybe}."
        c, m = self.pick.candidate, self.pick.measurement
        source = (f"measured on {s.eval_dir} in {c.runtime}" if m.top1 is not None
                  else "published figure of the fp32 weights")
        return (f"Pick {c.model} in {c.runtime} ({c.precision}): expected top-1 {_top1_text(self.pick.top1)} "
                f"({source}), {describe_interval(s, m)}, the most accurate candidate surely within "
                f"{s.describe_budget()} on this machine.")


def describe_interval(settings: PickSettings, measurement: Measurement) -> str:
    """p50 and its p10-p90 in the budget's unit, e.g. ``8.21 ms (p10-p90 7.90-8.64)``."""
    low, mid, high = settings.interval(measurement)
    unit = " ms" if settings.unit == "ms" else "x the reference"
    return f"{mid:.2f}{unit} (p10-p90 {low:.2f}-{high:.2f})"


def _top1_text(top1: float | None) -> str:
    return "unknown" if top1 is None else f"{top1:.2f}%"


def default_cache_dir() -> Path:
    from ..weights.hub import cache_home

    return cache_home() / "pick"


# --- building and timing the candidates ------------------------------------------------------

class _Builder:
    """Builds each variant once (random weights), its ONNX export, INT8 and OpenVINO files, lazily."""

    def __init__(self, work: Path, settings: PickSettings) -> None:
        self.work = work
        self.settings = settings
        self._files: dict[tuple[str, str], Path] = {}
        self._models: dict[str, torch.nn.Module] = {}

    def model(self, name: str) -> torch.nn.Module:
        """The network behind ``name``: a registry variant (random weights) or a checkpoint path."""
        if name not in self._models:
            if self.settings.checkpoints:
                from ..deploy.pipeline import load_deployable

                self._models[name] = load_deployable(name)
            else:
                overrides = {"resolution": self.settings.resolution} if self.settings.resolution else {}
                self._models[name] = create_model(name, **overrides).eval()
        return self._models[name]

    def resolution(self, name: str) -> int:
        return self.settings.resolution or self.model(name).preprocessing.resolution

    def calibration(self, name: str) -> torch.Tensor:
        """Checkpoints: images from ``calib_dir``; random weights: seeded noise (only timing matters)."""
        if self.settings.checkpoints:
            from ..deploy.calibration import calibration_images

            return calibration_images(self.settings.calib_dir, self.model(name).preprocessing)
        size = self.resolution(name)
        return torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))

    def top1(self, name: str, runner: Runner) -> float:
        """Top-1 (%) of ``runner`` on the evaluation folder, in the model's own preprocessing."""
        from ..deploy.calibration import labelled_loader

        model = self.model(name)
        logits, targets = collect_logits({"candidate": runner},
                                         labelled_loader(self.settings.eval_dir, model.preprocessing,
                                                         model.class_names))
        return 100.0 * float((logits["candidate"].argmax(1) == targets).mean())

    def _file(self, name: str, kind: str) -> Path:
        if (name, kind) in self._files:
            return self._files[(name, kind)]
        from ..deploy.export import export_model
        from ..deploy.quantize import OrtRecipe, quantize_onnx

        path = self.work / f"{len(self._files)}.{kind}"
        if kind in EDGE_CANDIDATES:
            from ..deploy.edge import EDGE_RUNTIMES, write_edge

            runtime = EDGE_CANDIDATES[kind]
            path = write_edge(self.model(name), path.with_suffix(EDGE_RUNTIMES[runtime]), runtime,
                              self.calibration(name) if kind.endswith("int8") else None).path
        elif kind == "onnx":
            export_model(self.model(name), path, "onnx", fold_bn=True)
        elif kind == "int8.onnx":
            quantize_onnx(self._file(name, "onnx"), path, self.calibration(name), OrtRecipe())
        else:
            from ..deploy.openvino import convert_onnx

            source = self._file(name, "int8.onnx" if kind == "int8.xml" else "onnx")
            path = convert_onnx(source, path)
        self._files[(name, kind)] = path
        return path

    def runner(self, name: str, candidate: Candidate) -> tuple[Runner, float]:
        """A runner of ``candidate`` (of the network ``name``) and its file size in MB (eager: the
        bytes of its weights)."""
        threads = self.settings.threads
        if candidate.runtime in ("eager", "compile"):
            model = self.model(name)
            module = torch.compile(model) if candidate.runtime == "compile" else model
            return torch_runner(module, candidate.runtime), tensor_bytes(model) / 1e6
        if candidate.runtime in EDGE_CANDIDATES:
            from ..deploy.edge import edge_runner

            path = self._file(name, candidate.runtime)
            return (edge_runner(path, EDGE_CANDIDATES[candidate.runtime], threads, name=candidate.runtime),
                    path.stat().st_size / 1e6)
        if candidate.runtime.startswith("onnxruntime"):
            path = self._file(name, "int8.onnx" if candidate.precision == "int8" else "onnx")
            return onnx_runner(path, threads, name=candidate.runtime), path.stat().st_size / 1e6
        from ..deploy.openvino import openvino_runner

        path = self._file(name, "int8.xml" if candidate.precision == "int8" else "xml")
        runner = openvino_runner(path, "bf16" if candidate.precision == "bf16" else "fp32", threads,
                                 name=candidate.runtime)
        return runner, (path.stat().st_size + path.with_suffix(".bin").stat().st_size) / 1e6


def reference_runner(work: Path, batch_shape: tuple[int, ...], threads: int | None) -> Runner:
    """torchvision's B0 (random weights) exported the plain way (``torch.onnx.export``), ONNX Runtime fp32,
    for inputs of ``batch_shape`` (its own 224 px, whatever the candidates' sizes)."""
    import warnings

    from ..bench.peers import build_torchvision

    path = work / "reference_torchvision_b0.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(build_torchvision("efficientnet_b0").eval(), (torch.randn(*batch_shape),), str(path),
                          dynamo=False, input_names=["input"], output_names=["logits"])
    return onnx_runner(path, threads, name="reference")


def measure_candidate(runner: Runner, batch: np.ndarray, reference: Runner, reference_batch: np.ndarray,
                      max_seconds: float, memory_before: int | None) -> Measurement:
    """``runner`` on ``batch`` and ``reference`` on ``reference_batch`` in turns until the ratio
    settles or ``max_seconds`` pass (:func:`effnet.bench.measure.time_rounds`); the memory is the
    growth of resident memory from ``memory_before`` (taken before loading) to after the first
    call, None where it cannot be seen (not positive)."""
    runner(batch)  # load, compile or lower once before anything is timed
    after = resident_memory()
    growth = None if memory_before is None or after is None else (after - memory_before) / 1e6
    rounds = time_rounds({"candidate": lambda: runner(batch), "reference": lambda: reference(reference_batch)},
                         "reference", max_seconds, SMALL_SPREAD, MIN_ROUNDS, pause=0.05)
    ms = [1000 * s for s in rounds.seconds["candidate"]]
    ratios = rounds.ratios("candidate", "reference")
    return Measurement(quantile(ms, 0.1), quantile(ms, 0.5), quantile(ms, 0.9), quantile(ratios, 0.1),
                       quantile(ratios, 0.5), quantile(ratios, 0.9),
                       1000 * quantile(rounds.seconds["reference"], 0.5), len(ms), rounds.settled,
                       growth if growth is not None and growth > 0 else None, 0.0)


@dataclass(frozen=True)
class _Planned:
    """A candidate in the order it is considered, with what is known before measuring."""

    name: str
    row: PickRow
    unavailable: str | None


def _plan(settings: PickSettings, builder: _Builder, bf16: bool) -> list[list[_Planned]]:
    """Every candidate, in groups of siblings smallest first, with its expected published top-1."""
    groups = []
    for siblings in settings.variants():
        group = []
        for name in siblings:
            resolution = builder.resolution(name)
            label, weights, top1 = name, "", None
            if settings.checkpoints:
                path = Path(name)
                label = f"{builder.model(name).model_name} ({path.name})"
                weights = f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
            else:
                top1 = published_top1(name)
            for runtime in settings.runtimes:
                unavailable = "unavailable: no bf16 on this CPU" if runtime == "openvino-bf16" and not bf16 else None
                group.append(_Planned(name, PickRow(Candidate(label, runtime, settings.batch, resolution, weights),
                                                    top1), unavailable))
        groups.append(group)
    return groups


def pick(settings: PickSettings, progress: Callable[[str], None] | None = None) -> PickResult:
    """Measure (or read from the cache) every candidate that may meet the budget; mark the Pareto
    front of (latency in the budget's unit, top-1) and pick the most accurate candidate surely
    within the budget. ``progress`` receives what is about to happen (and a progress bar is drawn
    on stderr while measuring)."""
    from ..deploy.openvino import bf16_supported

    say = progress or (lambda message: None)
    cache = MeasurementCache(settings.cache_dir or default_cache_dir(), settings.threads)
    bf16 = "openvino-bf16" not in settings.runtimes or bf16_supported()
    rows: list[PickRow] = []
    measured = from_cache = 0
    machine: MachineCheck | None = None
    with tempfile.TemporaryDirectory(prefix="effnet-pick-") as work_name:
        builder = _Builder(Path(work_name), settings)
        groups = _plan(settings, builder, bf16)
        pending = [p for group in groups for p in group
                   if p.unavailable is None and (settings.refresh or cache.get(p.row.candidate) is None)]
        reference = reference_batch = None
        cap = settings.max_seconds
        if pending:
            size = settings.resolution or REFERENCE_RESOLUTION
            reference_batch = np.random.default_rng(0).standard_normal((settings.batch, 3, size, size),
                                                                       dtype=np.float32)
            reference = reference_runner(builder.work, reference_batch.shape, settings.threads)
            machine = check_machine(lambda: reference(reference_batch))
            say(machine.describe())
            cap *= BUSY_CAP_FACTOR if machine.busy else 1
            say(f"measuring up to {len(pending)} more candidate(s) not in the cache (a larger sibling of one surely "
                "over the budget is skipped): " + ", ".join(f"{p.row.candidate.model} in {p.row.candidate.runtime}"
                                                            for p in pending))
        with tqdm(total=len(pending), desc="pick", unit="candidate", disable=progress is None or not pending,
                  leave=False, file=sys.stderr) as bar:
            for group in groups:
                over: dict[str, PickRow] = {}
                for planned in group:
                    row, candidate = planned.row, planned.row.candidate
                    if planned.unavailable:
                        rows.append(replace(row, status=planned.unavailable))
                        continue
                    cached = None if settings.refresh else cache.get(candidate)
                    if cached is None and candidate.runtime in over:
                        smaller = over[candidate.runtime]
                        rows.append(replace(row, status=f"skipped: {smaller.candidate.model} already "
                                                        f"{describe_interval(settings, smaller.measurement)}"))
                        bar.update(1)
                        continue
                    if cached is not None:
                        row = replace(row, measurement=cached, cached=True, top1=_expected(cached, row.top1))
                        from_cache += 1
                    else:
                        bar.set_postfix_str(f"{candidate.model} {candidate.runtime}")
                        try:
                            row = _measured(row, planned.name, builder, reference, reference_batch, cap, settings)
                        except Exception as error:  # noqa: BLE001 - the reason goes in its row, the rest still run
                            rows.append(replace(row, status=failure_status(error)))
                            bar.update(1)
                            continue
                        bar.update(1)
                        cache.put(candidate, row.measurement)
                        measured += 1
                    if settings.latency_verdict(row.measurement) == "over":
                        over[candidate.runtime] = row
                    rows.append(row)
    rows = mark(rows, settings)
    choice = max((r for r in rows if r.fits), key=lambda r: (r.top1 or 0.0, -settings.interval(r.measurement)[1]),
                 default=None)
    return PickResult(settings, rows, choice, measured, from_cache, machine)


def _measured(row: PickRow, name: str, builder: _Builder, reference: Runner, reference_batch: np.ndarray,
              cap: float, settings: PickSettings) -> PickRow:
    """``row`` with its candidate built, run and measured (and its top-1 measured on ``eval_dir``)."""
    candidate = row.candidate
    batch = np.random.default_rng(0).standard_normal((settings.batch, 3, candidate.resolution,
                                                      candidate.resolution), dtype=np.float32)
    release_free_memory()
    before = resident_memory()
    runner, file_mb = builder.runner(name, candidate)
    measurement = replace(measure_candidate(runner, batch, reference, reference_batch, cap, before), file_mb=file_mb)
    if settings.eval_dir is not None:
        measurement = replace(measurement, top1=builder.top1(name, runner))
    return replace(row, measurement=measurement, top1=_expected(measurement, row.top1))


def _expected(measurement: Measurement, published: float | None) -> float | None:
    return published if measurement.top1 is None else measurement.top1


def mark(rows: Sequence[PickRow], settings: PickSettings) -> list[PickRow]:
    """Each measured row with its ``verdict`` (see :class:`PickRow`) and ``pareto`` (no other
    measured row is at least as fast, in the budget's unit, and as accurate, and better in one)."""
    marked = []
    measured = [r for r in rows if r.ok and r.top1 is not None]

    def p50(row: PickRow) -> float:
        return settings.interval(row.measurement)[1]

    for row in rows:
        if not row.ok:
            marked.append(row)
            continue
        m = row.measurement
        verdicts = [settings.latency_verdict(m)]
        if settings.max_memory_mb is not None:
            verdicts.append("uncertain" if m.memory_mb is None else "fits" if m.memory_mb <= settings.max_memory_mb
                            else "over")
        if settings.max_file_mb is not None:
            verdicts.append("fits" if m.file_mb <= settings.max_file_mb else "over")
        verdict = max(verdicts, key=VERDICTS.index)
        pareto = row.top1 is not None and not any(
            p50(o) <= p50(row) and o.top1 >= row.top1 and (p50(o) < p50(row) or o.top1 > row.top1) for o in measured)
        marked.append(replace(row, verdict=verdict, pareto=pareto))
    return marked
