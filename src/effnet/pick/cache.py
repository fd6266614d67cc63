"""Pick's measurements on disk: ``<effnet cache>/pick/measurements.json``, one record per
candidate, keyed by the machine (CPU model, features, cores), the library versions, the
threads and the candidate, so that any budget is answered from it for what was measured.

The file is validated as it is read (a record with a missing field, a latency that is a
string, NaN or not positive is dropped with a warning and measured again) and written under a
lock, merging what another pick wrote meanwhile (:class:`effnet.cache_file.CacheFile`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..cache_file import CacheFile, cache_key
from ..deploy.environment import cpu_description, library_versions

CACHE_VERSION = 2


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


def precision_of(runtime: str) -> str:
    return "int8" if runtime.endswith("int8") else "bf16" if runtime.endswith("bf16") else "fp32"


@dataclass(frozen=True)
class Measurement:
    """What a candidate costs here, over interleaved rounds with the reference: its latency per
    batch (p10, p50, p90 of the rounds' medians), its ratio to the reference timed in the same
    rounds (p10, p50, p90), the reference's p50, the rounds and whether the ratio's spread
    settled before the cap; the growth of resident memory while loading and running it (None:
    not measured), its file size and, with evaluation images, its top-1 (%)."""

    p10_ms: float
    p50_ms: float
    p90_ms: float
    ratio_p10: float
    ratio_p50: float
    ratio_p90: float
    reference_p50_ms: float
    rounds: int
    settled: bool
    memory_mb: float | None
    file_mb: float
    top1: float | None = None


_POSITIVE = ("p10_ms", "p50_ms", "p90_ms", "ratio_p10", "ratio_p50", "ratio_p90", "reference_p50_ms")


def check_record(record: dict) -> str | None:
    """What is wrong with a cache record (None: it is usable)."""
    measurement = record.get("measurement")
    if not isinstance(measurement, dict) or not isinstance(record.get("candidate"), dict):
        return "no candidate or measurement"
    missing = sorted({f.name for f in fields(Measurement) if f.name != "top1"} - set(measurement))
    if missing:
        return f"missing {', '.join(missing)}"
    for name in _POSITIVE:
        value = measurement[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            return f"{name} is {value!r}, not a positive number"
    for name, low in (("memory_mb", 0.0), ("file_mb", 0.0), ("top1", 0.0)):
        value = measurement.get(name)
        if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value) or value < low):
            return f"{name} is {value!r}"
    if not isinstance(measurement["rounds"], int) or measurement["rounds"] < 1:
        return f"rounds is {measurement['rounds']!r}"
    return None


class MeasurementCache:
    """Measurements on disk, keyed by machine, library versions, threads and candidate."""

    def __init__(self, folder: Path, threads: int | None) -> None:
        self.file = CacheFile(Path(folder) / "measurements.json", check_record)
        self._context = (CACHE_VERSION, cpu_description(), library_versions(), threads)
        self._records = self.file.read()

    def key(self, candidate: Candidate) -> str:
        return cache_key(*self._context, asdict(candidate))

    def get(self, candidate: Candidate) -> Measurement | None:
        record = self._records.get(self.key(candidate))
        if record is None:
            return None
        names = {f.name for f in fields(Measurement)}
        return Measurement(**{k: v for k, v in record["measurement"].items() if k in names})

    def put(self, candidate: Candidate, measurement: Measurement) -> None:
        record = {"candidate": asdict(candidate), "measurement": asdict(measurement)}
        self._records[self.key(candidate)] = record
        self.file.put(self.key(candidate), record)
