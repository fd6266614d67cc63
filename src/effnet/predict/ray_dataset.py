"""A bulk job as a Ray Data pipeline, run by a driver actor on the cluster.

The pipeline streams: the inputs' table is split into blocks of ``batch_size`` rows, reading
tasks (:func:`~effnet.predict.ray_workers.read_images`) prepare them, and a pool of actors
(:class:`~effnet.predict.ray_workers.BatchPredictor`) classifies them, with the shares of
:class:`~effnet.predict.ray_plan.ActorPlan`. Ray restarts a dead actor and retries its batch.

The pipeline runs in :class:`DatasetDriver`, a 0-CPU actor, and the caller pulls the result
tables from it (:func:`stream_predictions`): the same code runs against a local instance, a
cluster address and a Ray Client (``ray://``) connection, through which Ray Data cannot iterate.
The model is checked there before any worker starts (a model that cannot load would otherwise
make Ray restart its actors). A pipeline that stops moving for :data:`STALL_TIMEOUT_S` fails with
a message instead of waiting forever.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..errors import EffnetError, first_line
from .model_ref import ModelRef
from .ray_cluster import RayClusterError
from .ray_plan import TASK_CPUS, ActorPlan
from .ray_workers import BatchPredictor, read_images

STALL_TIMEOUT_S = 300.0
"""How long the pipeline may go without moving a block (or an actor pool without starting) before it fails."""
ACTOR_INIT_DEATHS = 3
"""Actors that may die in a row while loading the model before the run fails (a model that cannot load)."""
QUEUED_TABLES = 16
"""Result tables the driver actor holds for the caller before the pipeline waits (backpressure)."""
TAKE_WAIT_S = 1.0
RESUME_HINT = "the rows received so far are saved: run again with --resume to add the rest"


@dataclass(frozen=True)
class BulkJob:
    """What the driver actor runs: the model (by name or path), the resource plan, the batch
    size and the number of classes listed per input."""

    model: ModelRef
    plan: ActorPlan
    batch_size: int = 32
    top_k: int = 5


def predictions(job: BulkJob, inputs: pa.Table) -> Iterator[pa.Table]:
    """Run ``job`` over ``inputs`` (columns ``path`` and ``location``) in this process's Ray
    connection; yields result tables as they come."""
    import ray.data
    from ray.data.exceptions import ExecutionTimeoutError

    preprocessing = job.model.load("cpu", threads=1).preprocessing  # fails here, once, if it cannot load
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_no_progress_timeout_s = STALL_TIMEOUT_S
    context.wait_for_min_actors_s = int(STALL_TIMEOUT_S)
    context.max_consecutive_actor_init_deaths = ACTOR_INIT_DEATHS
    limits = context.execution_options.resource_limits
    context.execution_options.resource_limits = limits.copy(cpu=job.plan.cluster_cpus)
    plan = job.plan
    blocks = max(1, math.ceil(inputs.num_rows / job.batch_size))
    dataset: ray.data.Dataset = ray.data.from_arrow(inputs, override_num_blocks=blocks)
    # fn_kwargs: Ray's stubs type the function as taking the batch alone
    dataset = dataset.map_batches(read_images, fn_kwargs={"preprocessing": preprocessing},  # type: ignore[arg-type]
                                  batch_size=job.batch_size,
                                  batch_format="numpy", num_cpus=TASK_CPUS,
                                  compute=ray.data.TaskPoolStrategy(size=plan.task_concurrency))
    dataset = dataset.map_batches(BatchPredictor, batch_size=job.batch_size, batch_format="numpy",
                                  fn_constructor_args=(job.model, job.top_k, plan.threads,
                                                       "cuda" if plan.actor_gpus else "cpu"),
                                  num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus or None,
                                  compute=ray.data.ActorPoolStrategy(size=plan.actors))
    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    except ExecutionTimeoutError as error:
        raise RayClusterError(f"the Ray pipeline made no progress for {STALL_TIMEOUT_S:g} s ({first_line(error)}): "
                              f"the cluster ({plan.cluster_cpus:g} CPUs) cannot run {plan.describe()}, most likely "
                              "because other work holds its CPUs (see `ray status`); wait for it or use fewer "
                              f"--actors. {RESUME_HINT}") from None


class DatasetDriver:
    """A Ray actor (0 CPUs) that runs :func:`predictions` in a thread and hands the result tables
    over through a bounded queue."""

    def __init__(self, job: BulkJob, inputs: pa.Table) -> None:
        self._results: queue.Queue[pa.Table | None] = queue.Queue(maxsize=QUEUED_TABLES)
        self._error: Exception | None = None
        self._finished = False
        threading.Thread(target=self._run, args=(job, inputs), daemon=True).start()

    def _run(self, job: BulkJob, inputs: pa.Table) -> None:
        try:
            for table in predictions(job, inputs):
                self._results.put(table)
        except Exception as error:  # handed to the caller by take()
            self._error = error if isinstance(error, EffnetError) else RayClusterError(
                f"the run failed on the Ray cluster: {_innermost(error)}; {RESUME_HINT}")
        finally:
            self._results.put(None)

    def take(self, wait_s: float = TAKE_WAIT_S) -> list[pa.Table] | None:
        """The result tables ready now (waiting up to ``wait_s`` for the first); ``None`` once
        all were taken; the run's error, raised, after the last table."""
        tables: list[pa.Table] = []
        while not self._finished:
            try:
                item = self._results.get(timeout=wait_s) if not tables else self._results.get_nowait()
            except queue.Empty:
                return tables
            if item is None:
                self._finished = True
            else:
                tables.append(item)
        if tables:
            return tables
        if self._error is not None:
            raise self._error
        return None


def _innermost(error: BaseException) -> str:
    """The first line of the deepest cause of an error Ray wrapped (a worker's own exception)."""
    while (cause := getattr(error, "cause", None) or error.__cause__) is not None and cause is not error:
        error = cause
    return f"{type(error).__name__}: {first_line(error)}"


def stream_predictions(job: BulkJob, inputs: pa.Table) -> Generator[pa.Table, None, None]:
    """Result tables of ``job`` over ``inputs``, run by a :class:`DatasetDriver` on the connected
    cluster. Closing the iterator stops the job."""
    import ray
    from ray.exceptions import ActorDiedError, RayTaskError

    driver: Any = ray.remote(DatasetDriver).options(num_cpus=0, max_restarts=0).remote(job, inputs)
    try:
        while True:
            try:
                tables = ray.get(driver.take.remote())
            except RayTaskError as error:
                cause = error.cause
                raise cause if isinstance(cause, EffnetError) else RayClusterError(
                    f"the run failed on the Ray cluster: {_innermost(error)}; {RESUME_HINT}") from None
            except ActorDiedError as error:
                raise RayClusterError(f"the Ray process that ran the pipeline died ({first_line(error)}); "
                                      f"{RESUME_HINT}") from None
            if tables is None:
                return
            yield from tables
    finally:
        ray.kill(driver)
