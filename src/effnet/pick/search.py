"""``effnet pick``: which variant, in which runtime and precision, is the most accurate one that
meets a latency (and memory, file size) budget on this machine.

Every candidate (variant x runtime) is measured here, interleaved with one reference,
torchvision's B0 exported the plain way and run in ONNX Runtime fp32 at the same batch size,
so that a busy machine shows as noise in both instead of as a ranking
(:func:`effnet.bench.measure.time_interleaved`). The time is bounded three ways:

- skip: variants of a family are measured smallest first; once one is over the latency budget
  in a runtime, the larger ones are skipped in that runtime (the table says so);
- cap: each measurement stops after ``max_seconds`` (at least two rounds);
- cache: measurements are kept in ``<effnet cache>/pick/measurements.json`` keyed by the
  machine (CPU model and features, cores), the library versions and the candidate, so another
  budget is answered from it in seconds.

Weights are random (latency does not depend on them); the expected top-1 is the published
ImageNet top-1 of the variant's default pretrained weights (effnet.weights.sources), an fp32
figure: the INT8 and bf16 candidates' own accuracy is not measured then. With checkpoints and
an evaluation folder instead, the candidates are those trained models, and every candidate's
top-1 is measured on the user's images in its own runtime and precision (INT8 calibrated on
``calib_dir``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..bench.measure import LatencyStats, resident_memory, tensor_bytes, time_interleaved
from ..bench.peers import published_top1
from ..bench.runner import failure_status
from ..deploy.compare import collect_logits
from ..deploy.environment import cpu_description, library_versions
from ..deploy.runtime import Runner, onnx_runner, torch_runner
from ..errors import ConfigError
from ..factory import create_model
from ..files import atomic_write
from ..registry import get_entry, list_models

logger = logging.getLogger("effnet.deploy")

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
CACHE_VERSION = 1


def precision_of(runtime: str) -> str:
    return "int8" if runtime.endswith("int8") else "bf16" if runtime.endswith("bf16") else "fp32"


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
class Candidate:
    """One thing to measure: a variant in a runtime at a batch size and input size."""

    model: str
    runtime: str
    batch: int
    resolution: int
    weights: str = ""
    """Empty for random weights; for a checkpoint, its path, size and modification time."""

    @property
    def precision(self) -> str:
        return precision_of(self.runtime)


@dataclass(frozen=True)
class Measurement:
    """What a candidate costs here: latency per batch (p50, p90), the reference's p50 in the same
    interleaved run, the growth of resident memory while loading and running it, and its file size."""

    p50_ms: float
    p90_ms: float
    reference_p50_ms: float
    memory_mb: float | None
    file_mb: float
    iterations: int
    top1: float | None = None
    """Top-1 (%) measured on the evaluation images in this runtime and precision, if asked for."""


@dataclass(frozen=True)
class PickRow:
    candidate: Candidate
    top1: float | None
    measurement: Measurement | None = None
    status: str = "ok"
    cached: bool = False
    pareto: bool = False
    fits: bool = False

    @property
    def ok(self) -> bool:
        return self.measurement is not None and self.status == "ok"


@dataclass(frozen=True)
class PickSettings:
    """The budget and how to measure. The latency budget is in milliseconds (``max_latency_ms``),
    or relative to the reference measured interleaved with each candidate (``max_latency_ratio``:
    1.0 is as fast as torchvision's B0 in ONNX Runtime fp32), which holds on a busy machine too;
    with both, both must hold. ``resolution`` replaces every variant's native input size (quick
    runs; the published top-1 stays the native one)."""

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
        if self.max_latency_ms is None and self.max_latency_ratio is None:
            raise ConfigError("give a latency budget: --max-latency-ms MS, or --max-latency-ratio R (relative to "
                              "torchvision's B0 in ONNX Runtime fp32, measured alongside)")
        if (min(self.max_latency_ms or 1, self.max_latency_ratio or 1) <= 0 or self.batch < 1
                or self.max_seconds <= 0):
            raise ConfigError(f"need a positive latency budget, batch and measurement cap; got "
                              f"{self.max_latency_ms} ms, ratio {self.max_latency_ratio}, batch {self.batch}, "
                              f"{self.max_seconds} s")
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

    def over_latency(self, measurement: Measurement) -> bool:
        """Whether ``measurement`` is slower than the latency budget."""
        ratio = measurement.p50_ms / measurement.reference_p50_ms
        return ((self.max_latency_ms is not None and measurement.p50_ms > self.max_latency_ms)
                or (self.max_latency_ratio is not None and ratio > self.max_latency_ratio))

    def describe_latency(self) -> str:
        parts = ([f"{self.max_latency_ms:g} ms"] if self.max_latency_ms is not None else []) + (
            [f"{self.max_latency_ratio:g}x the reference"] if self.max_latency_ratio is not None else [])
        return " and ".join(parts) + f" at batch {self.batch}"

    def variants(self) -> list[list[str]]:
        """Groups of siblings, smallest first: one per family, or the models or checkpoints asked for."""
        if self.checkpoints:
            return [list(self.checkpoints)]
        if self.models:
            return [list(self.models)]
        return [family_variants(f) for f in self.families]


@dataclass
class PickResult:
    settings: PickSettings
    rows: list[PickRow]
    pick: PickRow | None
    measured: int
    from_cache: int

    def reference_ms(self) -> float | None:
        values = [r.measurement.reference_p50_ms for r in self.rows if r.ok]
        return float(np.median(values)) if values else None

    def sentence(self) -> str:
        """The pick in one sentence."""
        s = self.settings
        budget = s.describe_latency() + (
            f", {s.max_memory_mb:g} MB of memory" if s.max_memory_mb else "") + (
            f", {s.max_file_mb:g} MB of file" if s.max_file_mb else "")
        if self.pick is None:
            fastest = min((r for r in self.rows if r.ok), key=lambda r: r.measurement.p50_ms, default=None)
            hint = (f"; the fastest is {fastest.candidate.model} in {fastest.candidate.runtime} at "
                    f"{fastest.measurement.p50_ms:.2f} ms" if fastest else "")
            return f"No candidate meets {budget} on this machine{hint}."
        c, m = self.pick.candidate, self.pick.measurement
        source = (f"measured on {s.eval_dir} in {c.runtime}" if self.pick.measurement.top1 is not None
                  else "published, fp32 weights")
        return (f"Pick {c.model} in {c.runtime} ({c.precision}): expected top-1 {_top1_text(self.pick.top1)} "
                f"({source}), p50 {m.p50_ms:.2f} ms ({m.p50_ms / m.reference_p50_ms:.2f}x "
                f"{REFERENCE}), the most accurate candidate within {budget} on this machine.")


def _top1_text(top1: float | None) -> str:
    return "unknown" if top1 is None else f"{top1:.2f}%"


# --- the cache -----------------------------------------------------------------------------

def default_cache_dir() -> Path:
    from ..weights.hub import cache_home

    return cache_home() / "pick"


class MeasurementCache:
    """Measurements on disk, keyed by machine, library versions, threads, cap and candidate."""

    def __init__(self, folder: Path, threads: int | None, max_seconds: float) -> None:
        self.path = Path(folder) / "measurements.json"
        self._context = {"version": CACHE_VERSION, "machine": cpu_description(), "libraries": library_versions(),
                         "threads": threads, "max_seconds": max_seconds}
        self._entries: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                logger.warning("ignoring an unreadable measurement cache %s", self.path)

    def key(self, candidate: Candidate) -> str:
        text = json.dumps({**self._context, "candidate": asdict(candidate)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(self, candidate: Candidate) -> Measurement | None:
        entry = self._entries.get(self.key(candidate))
        return Measurement(**entry["measurement"]) if entry else None

    def put(self, candidate: Candidate, measurement: Measurement) -> None:
        self._entries[self.key(candidate)] = {"candidate": asdict(candidate), "measurement": asdict(measurement)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda temp: temp.write_text(json.dumps(self._entries, indent=1)))


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
    """Interleaved timing of ``runner`` on ``batch`` against ``reference`` on ``reference_batch``
    within about ``max_seconds``."""
    runner(batch)  # load, compile or lower once before anything is timed
    after = resident_memory()
    memory = None if memory_before is None or after is None else max(0, after - memory_before) / 2**20
    first = time_interleaved({"candidate": lambda: runner(batch), "reference": lambda: reference(reference_batch)},
                             rounds=1, calls_per_round=1, warmup=1)
    per_round = first["candidate"][0] + first["reference"][0]
    calls = 3 if 3 * per_round * 4 <= max_seconds else 1
    rounds = int(max(2, min(8, max_seconds // max(per_round * calls, 1e-6))))
    times = time_interleaved({"candidate": lambda: runner(batch), "reference": lambda: reference(reference_batch)},
                             rounds=rounds, calls_per_round=calls, warmup=0, pause=0.05)
    size = len(batch)
    latency = LatencyStats.from_times(times["candidate"], size)
    reference_ms = LatencyStats.from_times(times["reference"], size).median_ms
    return Measurement(latency.median_ms, latency.p90_ms, reference_ms, memory, 0.0, latency.iterations)


def pick(settings: PickSettings, progress: Callable[[str], None] | None = None) -> PickResult:
    """Measure (or read from the cache) every candidate that may meet the budget; mark the Pareto
    front of (latency, top-1) and pick the most accurate candidate within the budget."""
    from ..deploy.openvino import bf16_supported

    cache = MeasurementCache(settings.cache_dir or default_cache_dir(), settings.threads, settings.max_seconds)
    bf16 = "openvino-bf16" not in settings.runtimes or bf16_supported()
    rows: list[PickRow] = []
    measured = from_cache = 0
    reference: Runner | None = None
    reference_batch: np.ndarray | None = None
    with tempfile.TemporaryDirectory(prefix="effnet-pick-") as work_name:
        builder = _Builder(Path(work_name), settings)
        for siblings in settings.variants():
            over: dict[str, tuple[str, float]] = {}
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
                    candidate = Candidate(label, runtime, settings.batch, resolution, weights)
                    row = PickRow(candidate, top1)
                    if runtime == "openvino-bf16" and not bf16:
                        rows.append(replace(row, status="unavailable: no bf16 on this CPU"))
                        continue
                    if runtime in over:
                        smaller, slow = over[runtime]
                        rows.append(replace(row, status=f"skipped: {smaller} already {slow.p50_ms:.1f} ms "
                                                        f"({slow.p50_ms / slow.reference_p50_ms:.2f}x ref)"))
                        continue
                    cached = None if settings.refresh else cache.get(candidate)
                    if cached is not None:
                        row = replace(row, measurement=cached, cached=True, top1=_expected(cached, top1))
                        from_cache += 1
                    else:
                        if progress:
                            progress(f"measuring {label} in {runtime} ({resolution} px, batch {settings.batch})")
                        try:
                            batch = np.random.default_rng(0).standard_normal(
                                (settings.batch, 3, resolution, resolution), dtype=np.float32)
                            if reference is None:
                                size = settings.resolution or REFERENCE_RESOLUTION
                                reference_batch = np.random.default_rng(0).standard_normal(
                                    (settings.batch, 3, size, size), dtype=np.float32)
                                reference = reference_runner(builder.work, reference_batch.shape, settings.threads)
                            before = resident_memory()
                            runner, file_mb = builder.runner(name, candidate)
                            measurement = replace(measure_candidate(runner, batch, reference, reference_batch,
                                                                    settings.max_seconds,
                                                                    before), file_mb=file_mb)
                            if settings.eval_dir is not None:
                                measurement = replace(measurement, top1=builder.top1(name, runner))
                            del runner
                        except Exception as error:  # noqa: BLE001 - the reason goes in its row, the rest still run
                            rows.append(replace(row, status=failure_status(error)))
                            continue
                        cache.put(candidate, measurement)
                        row = replace(row, measurement=measurement, top1=_expected(measurement, top1))
                        measured += 1
                    if settings.over_latency(row.measurement):
                        over[runtime] = (label, row.measurement)
                    rows.append(row)
    rows = mark(rows, settings)
    choice = max((r for r in rows if r.fits), key=lambda r: (r.top1 or 0.0, -r.measurement.p50_ms), default=None)
    return PickResult(settings, rows, choice, measured, from_cache)


def _expected(measurement: Measurement, published: float | None) -> float | None:
    return published if measurement.top1 is None else measurement.top1


def mark(rows: Sequence[PickRow], settings: PickSettings) -> list[PickRow]:
    """Each row with ``fits`` (within every budget) and ``pareto`` (no other measured row is at
    least as fast and as accurate, and better in one) set."""
    marked = []
    measured = [r for r in rows if r.ok and r.top1 is not None]
    for row in rows:
        if not row.ok:
            marked.append(row)
            continue
        m = row.measurement
        fits = (not settings.over_latency(m)
                and (settings.max_memory_mb is None
                     or (m.memory_mb is not None and m.memory_mb <= settings.max_memory_mb))
                and (settings.max_file_mb is None or m.file_mb <= settings.max_file_mb))
        pareto = row.top1 is not None and not any(
            o.measurement.p50_ms <= m.p50_ms and o.top1 >= row.top1
            and (o.measurement.p50_ms < m.p50_ms or o.top1 > row.top1) for o in measured)
        marked.append(replace(row, fits=fits, pareto=pareto))
    return marked

