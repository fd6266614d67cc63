"""Bulk inference on Ray Data: what ``effnet predict --engine ray`` runs.

:func:`predict_on_ray` lists the inputs here (files, folders, globs, and CSV or Parquet lists of
paths), skips those already in the output folder (``resume``), connects to Ray
(:mod:`effnet.predict.ray_cluster`), sizes the actors from the cluster's resources
(:mod:`effnet.predict.ray_plan`), runs the pipeline on the cluster
(:mod:`effnet.predict.ray_dataset`) and writes the results here as they come, in whole part files
(:mod:`effnet.predict.parts`). Ctrl-C or SIGTERM stops it with every row received so far in
complete parts; ``resume`` then adds only what is missing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from ..errors import ConfigError
from ..files import printable_path
from .files import collect_images, is_path_list, read_path_list
from .model_ref import ModelRef
from .parts import DEFAULT_ROWS_PER_PART, PartFolder
from .ray_cluster import cluster_nodes, free_cpus, ray_session
from .ray_dataset import BulkJob, stream_predictions
from .ray_plan import plan_actors

LISTED_FAILURES = 20
"""How many failed inputs a summary keeps by name (all are in the output's error column)."""


@dataclass
class BulkSummary:
    """How a bulk run went: ``inputs`` listed, ``skipped`` (already in the output folder),
    ``written`` by this run, of which ``failed`` carry an error (the first ones, with their
    error, in ``failures``), and the times since the start: to the first result
    (``startup_s``), to the last (``last_result_s``) and in all (``seconds``)."""

    inputs: int
    skipped: int = 0
    written: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    unmatched: int = 0
    duplicates_dropped: int = 0
    model: str | None = None
    startup_s: float | None = None
    first_rows: int = 0
    last_result_s: float | None = None
    seconds: float = 0.0

    @property
    def steady_images_per_s(self) -> float | None:
        """The rate after the first result (``None`` before a second one)."""
        if self.startup_s is None or self.last_result_s is None or self.last_result_s <= self.startup_s:
            return None
        return (self.written - self.first_rows) / (self.last_result_s - self.startup_s)

    def record(self, table: pa.Table, seconds: float) -> None:
        """Count the rows of ``table``, received ``seconds`` after the start."""
        if self.startup_s is None:
            self.startup_s, self.first_rows = seconds, table.num_rows
        self.last_result_s = seconds
        self.written += table.num_rows
        errors = table.column("error").to_pylist()
        self.failed += sum(error is not None for error in errors)
        self.model = self.model or (table.column("model")[0].as_py() if table.num_rows else None)
        room = LISTED_FAILURES - len(self.failures)
        if room > 0:
            paths = table.column("path").to_pylist()
            self.failures += [(p, e) for p, e in zip(paths, errors, strict=True) if e is not None][:room]

    def describe(self) -> str:
        """E.g. ``"1003 predictions written (3 failed) in 61.2 s: start-up 14.0 s, then 21.3 images/s"``."""
        text = f"{self.written} prediction(s) written ({self.failed} failed) in {self.seconds:.1f} s"
        if self.startup_s is not None:
            text += f": start-up {self.startup_s:.1f} s"
            if self.steady_images_per_s is not None:
                text += f", then {self.steady_images_per_s:.1f} images/s"
        return text + (f"; {self.skipped} already in the output" if self.skipped else "")

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values (what the ``_SUCCESS`` marker holds)."""
        return {**asdict(self), "steady_images_per_s": self.steady_images_per_s}


def _location(entry: str) -> bytes:
    """What a reading task opens for an input: a URI as it is, a path made absolute here (the
    workers may run elsewhere), as bytes (a file name need not be valid UTF-8)."""
    return entry.encode() if "://" in entry else os.fsencode(os.path.abspath(entry))


def list_inputs(arguments: Sequence[str | Path], path_column: str = "path") -> tuple[pa.Table, list[str]]:
    """The inputs, each once, as a table of ``path`` (as ``effnet predict`` shows it) and
    ``location`` (what a reading task opens: a URI, or the path made absolute, as bytes): files,
    folders and globs (:func:`effnet.predict.collect_images`), and the entries of CSV or Parquet
    lists (:func:`effnet.predict.files.read_path_list`); and what was wrong with each argument
    that gave nothing."""
    lists = [str(argument) for argument in arguments if is_path_list(argument) and Path(argument).is_file()]
    images = collect_images([argument for argument in arguments if str(argument) not in lists])
    entries = {printable_path(file): os.fsencode(os.path.abspath(file)) for file in images.files}
    for list_file in lists:
        for entry in read_path_list(list_file, path_column):
            entries.setdefault(entry, _location(entry))
    table = pa.table({"path": pa.array(list(entries), pa.string()),
                      "location": pa.array(list(entries.values()), pa.binary())})
    return table, [f"{argument}: {reason}" for argument, reason in images.problems]


def predict_on_ray(inputs: Sequence[str | Path], out: str | Path, *, model: str | None = None,
                   checkpoint: str | Path | None = None, num_classes: int | None = None,
                   ray_address: str | None = None, actors: int | None = None, gpus_per_actor: float = 0.0,
                   batch_size: int = 32, top_k: int = 5, resume: bool = False, path_column: str = "path",
                   rows_per_part: int = DEFAULT_ROWS_PER_PART, progress: bool = True,
                   report: Callable[[str], None] | None = None) -> BulkSummary:
    """Classify ``inputs`` on Ray Data into the folder ``out``; ``effnet predict --engine ray``.

    ``inputs``: image files, folders, globs, and CSV/Parquet files listing paths or URIs in
    their ``path_column``. The model, as ``effnet predict`` takes it: ``model`` (a registry
    name), ``checkpoint`` (one of ours, or a folder written by ``effnet ship``), or both; it must
    be readable where the actors run. ``ray_address``: ``None`` starts a local Ray on this
    machine's cores (or uses the connection the caller made with ``ray.init``); ``auto``,
    ``HOST:PORT`` or ``ray://HOST:PORT`` joins a cluster (inputs and model must then be reachable
    under the same names from its nodes). ``actors`` (default: one per free CPU, or per GPU
    share) each hold one copy of the model; ``gpus_per_actor`` puts them on GPUs.

    ``out`` gets Parquet parts (CSV or JSON Lines when its name ends in ``.csv`` or ``.jsonl``)
    of ``rows_per_part`` rows and ``_SUCCESS`` at the end (see :mod:`effnet.predict.parts`): one
    row per input, failures with their error. ``resume`` skips the inputs already there. Status
    lines (inputs that gave nothing, the plan) go to ``report``; ``progress`` shows a bar.
    """
    if batch_size < 1 or top_k < 1:
        raise ConfigError(f"--batch-size and --top-k must be at least 1, got {batch_size} and {top_k}")
    start = time.perf_counter()
    folder = PartFolder(out, resume, rows_per_part)
    listed, problems = list_inputs(inputs, path_column)
    if report is not None:
        for problem in problems:
            report(problem)
    if not listed.num_rows:
        raise ConfigError("no inputs to classify (see the messages above)")
    todo = listed.filter(pa.array([path not in folder.done for path in listed.column("path").to_pylist()]))
    summary = BulkSummary(inputs=listed.num_rows, skipped=listed.num_rows - todo.num_rows, unmatched=len(problems))
    if todo.num_rows:
        with ray_session(ray_address):
            nodes = cluster_nodes()
            plan = plan_actors(nodes, actors, gpus_per_actor, free_cpus())
            if report is not None:
                report(f"{todo.num_rows} input(s) to classify on Ray ({len(nodes)} node(s), "
                       f"{plan.cluster_cpus:g} CPUs): {plan.describe()}")
            job = BulkJob(ModelRef(model, None if checkpoint is None else str(checkpoint), num_classes), plan,
                          batch_size, top_k)
            bar = tqdm(total=todo.num_rows, disable=not progress, unit="image", desc="predict", dynamic_ncols=True)
            try:
                with bar, contextlib.closing(stream_predictions(job, todo)) as results:
                    for table in results:
                        kept = folder.add(table)
                        summary.record(kept, time.perf_counter() - start)
                        bar.update(kept.num_rows)
            finally:
                folder.flush()  # an interruption or a failure keeps what was received, in whole parts
    summary.duplicates_dropped = folder.duplicates
    summary.seconds = time.perf_counter() - start
    folder.finish(summary.to_dict())
    return summary
