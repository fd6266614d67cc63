"""How a bulk run shares a Ray cluster's CPUs and GPUs between its reading tasks and its model actors.

Ray Data waits without a word when its tasks and actors cannot all be scheduled: with two
1-CPU actors on a 2-CPU machine (or on two 1-CPU nodes) the reading tasks never get a CPU and
the run hangs. :func:`plan_actors` sizes the shares from what the cluster has so that every
stage always fits, and refuses up front, with a message, what cannot fit:

- every node keeps a reserve for the reading and decoding tasks: :data:`TASK_CPUS` on nodes
  with less than 2 CPUs, twice that on larger ones, and :data:`READING_SHARE` of the CPUs on
  nodes large enough for that to be more;
- the actors share the rest, one share for all of them (Ray Data gives every actor of a pool
  the same resources), as large as lets the requested number of actors fit node by node;
- by default there is one actor per whole CPU left (at least one per node), or per GPU share
  when actors use GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError

TASK_CPUS = 0.25
"""The CPU share of one reading-and-decoding task."""
READING_SHARE = 0.2
"""The fraction of a large node's CPUs kept for reading: decoding and resizing a photo costs
about a fifth to a quarter of the CPU time of classifying it with B0."""
MIN_ACTOR_CPUS = 0.25
"""The smallest CPU share a model actor is given."""
_EPSILON = 1e-9


class CannotPlaceError(ConfigError):
    """The cluster cannot hold the requested actors next to the reading tasks."""


@dataclass(frozen=True)
class NodeResources:
    """What one alive node of the cluster offers."""

    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class ActorPlan:
    """The resources of a bulk run: ``actors`` model actors of ``actor_cpus`` CPUs (and
    ``actor_gpus`` GPUs) running ``threads`` threads each, and reading tasks of
    :data:`TASK_CPUS` CPUs, at most ``task_concurrency`` at a time."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    threads: int
    task_concurrency: int
    cluster_cpus: float

    def describe(self) -> str:
        """E.g. ``"2 actor(s) x 0.75 CPU, 1 thread(s) each; reading tasks 0.25 CPU x up to 2"``."""
        gpus = f" + {self.actor_gpus:g} GPU" if self.actor_gpus else ""
        return (f"{self.actors} actor(s) x {self.actor_cpus:g} CPU{gpus}, {self.threads} thread(s) each; "
                f"reading tasks {TASK_CPUS:g} CPU x up to {self.task_concurrency}")


def task_reserve(cpus: float) -> float:
    """The CPUs a node of ``cpus`` CPUs keeps for reading tasks (a multiple of :data:`TASK_CPUS`)."""
    share = math.floor(READING_SHARE * cpus / TASK_CPUS + _EPSILON) * TASK_CPUS
    return max(share, 2 * TASK_CPUS if cpus >= 2 else TASK_CPUS)


def plan_actors(nodes: Sequence[NodeResources], actors: int | None = None, gpus_per_actor: float = 0.0,
                free_cpus: float | None = None) -> ActorPlan:
    """The largest per-actor CPU share with which ``actors`` actors (default: see the module
    docstring) fit on ``nodes`` next to the reading tasks' reserve; ``free_cpus``: the CPUs not
    held by other work now. Raises :class:`CannotPlaceError` saying what to change."""
    if actors is not None and actors < 1:
        raise ConfigError(f"--actors must be at least 1, got {actors}")
    if gpus_per_actor < 0:
        raise ConfigError(f"--gpus-per-actor must be 0 or more, got {gpus_per_actor:g}")
    shown = _shown(nodes)
    rooms = {i: node.cpus - task_reserve(node.cpus) for i, node in enumerate(nodes)}
    hosts = {i: room for i, room in rooms.items() if room >= MIN_ACTOR_CPUS - _EPSILON
             and (not gpus_per_actor or nodes[i].gpus >= gpus_per_actor - _EPSILON)}
    if gpus_per_actor and not hosts:
        raise CannotPlaceError(f"--gpus-per-actor {gpus_per_actor:g} needs a node with that many GPUs and "
                               f"{MIN_ACTOR_CPUS + TASK_CPUS:g} CPUs; the Ray cluster has none ({shown}): drop "
                               "--gpus-per-actor, or connect to a cluster with GPUs (--ray-address)")
    if not hosts:
        raise CannotPlaceError(f"no node of the Ray cluster ({shown}) can hold a model actor next to the reading "
                               f"tasks: each node needs at least {MIN_ACTOR_CPUS + TASK_CPUS:g} CPUs")

    def capacity(i: int, share: float) -> int:
        """How many actors of ``share`` CPUs node ``i`` holds."""
        slots = math.floor(hosts[i] / share + _EPSILON)
        return min(slots, math.floor(nodes[i].gpus / gpus_per_actor + _EPSILON)) if gpus_per_actor else slots

    def fitting(share: float) -> int:
        return sum(capacity(i, share) for i in hosts)

    if actors is None:
        actors = sum(max(1, capacity(i, 1.0)) for i in hosts)
    shares = sorted({room / k for room in hosts.values() for k in range(1, actors + 1)}, reverse=True)
    share = next((s for s in shares if s >= MIN_ACTOR_CPUS - _EPSILON and fitting(s) >= actors), None)
    if share is None:
        most = fitting(MIN_ACTOR_CPUS)
        limit = f" and {gpus_per_actor:g} GPU" if gpus_per_actor else ""
        raise CannotPlaceError(f"{actors} model actors do not fit on the Ray cluster ({shown}) beside the CPUs each "
                               f"node keeps for reading: an actor needs at least {MIN_ACTOR_CPUS:g} CPU{limit}; "
                               f"use --actors {most} or fewer")
    share = math.floor(share * 100 + _EPSILON) / 100  # slack for the scheduler's float sums
    needed = actors * share + TASK_CPUS
    if free_cpus is not None and needed > free_cpus + _EPSILON:
        raise CannotPlaceError(f"the Ray cluster has {free_cpus:g} of {sum(n.cpus for n in nodes):g} CPUs free "
                               f"(other work holds the rest): {actors} actor(s) x {share:g} CPU + {TASK_CPUS:g} "
                               "for reading do not fit; wait for that work to finish (see `ray status`)")
    reserve = sum(node.cpus - rooms[i] if i in hosts else node.cpus for i, node in enumerate(nodes))
    return ActorPlan(actors=actors, actor_cpus=share, actor_gpus=gpus_per_actor, threads=max(1, round(share)),
                     task_concurrency=max(1, math.floor(reserve / TASK_CPUS + _EPSILON)),
                     cluster_cpus=sum(node.cpus for node in nodes))


def _shown(nodes: Sequence[NodeResources]) -> str:
    """The cluster in words: ``"CPUs per node: [2, 1]"``, with GPUs when there are any."""
    text = f"CPUs per node: [{', '.join(f'{n.cpus:g}' for n in nodes)}]"
    if any(n.gpus for n in nodes):
        text += f", GPUs per node: [{', '.join(f'{n.gpus:g}' for n in nodes)}]"
    return text
