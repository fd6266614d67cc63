"""How the Ray engine shares a cluster between its reading tasks and its model actors: every
stage always gets a slot (Ray Data otherwise waits without end), and what cannot fit is refused
with the change that would make it fit."""

from __future__ import annotations

import pytest

from effnet.predict.ray_plan import TASK_CPUS, CannotPlaceError, NodeResources, plan_actors


def _cpus(*cpus: float) -> list[NodeResources]:
    return [NodeResources(c) for c in cpus]


@pytest.mark.parametrize(("nodes", "actors", "expected"), [
    (_cpus(2), None, (1, 1.5, 2)),          # the 2-core machine: one actor, 2 threads, 0.5 CPU for reading
    (_cpus(2), 2, (2, 0.75, 1)),
    (_cpus(1, 1), None, (2, 0.75, 1)),      # one actor per node: 0.75 + 0.75 > 1, so never two on one node
    (_cpus(16), None, (13, 1.0, 1)),        # a fifth of a large node reads and decodes
    (_cpus(8, 4), 3, (3, 3.25, 3)),
])
def test_actors_and_reading_tasks_always_fit_together(nodes, actors, expected):
    plan = plan_actors(nodes, actors)
    assert (plan.actors, plan.actor_cpus, plan.threads) == expected
    for node in nodes:  # what each node holds of the pool still leaves a reading task room
        held = min(plan.actors, int(node.cpus // plan.actor_cpus)) * plan.actor_cpus
        assert held + TASK_CPUS <= node.cpus or held == 0
    assert plan.task_concurrency >= 2


def test_gpu_actors_get_one_gpu_share_each():
    nodes = [NodeResources(8, gpus=2), NodeResources(4)]
    plan = plan_actors(nodes, gpus_per_actor=1)
    assert (plan.actors, plan.actor_gpus) == (2, 1)
    assert plan_actors(nodes, gpus_per_actor=0.5).actors == 4


@pytest.mark.parametrize(("nodes", "options", "message"), [
    (_cpus(2), {"actors": 7}, "7 model actors do not fit on the Ray cluster (CPUs per node: [2]) beside the CPUs each "
                              "node keeps for reading: an actor needs at least 0.25 CPU; use --actors 6 or fewer"),
    (_cpus(1, 1), {"actors": 7}, "use --actors 6 or fewer"),
    (_cpus(0.25), {}, "no node of the Ray cluster (CPUs per node: [0.25]) can hold a model actor next to the "
                      "reading tasks: each node needs at least 0.5 CPUs"),
    (_cpus(2), {"gpus_per_actor": 1}, "--gpus-per-actor 1 needs a node with that many GPUs and 0.5 CPUs; the Ray "
                                      "cluster has none (CPUs per node: [2]): drop --gpus-per-actor"),
    ([NodeResources(8, gpus=1)], {"actors": 2, "gpus_per_actor": 1}, "use --actors 1 or fewer"),
    (_cpus(2), {"free_cpus": 1.0}, "the Ray cluster has 1 of 2 CPUs free (other work holds the rest): 1 actor(s) x "
                                   "1.5 CPU + 0.25 for reading do not fit; wait for that work to finish"),
])
def test_what_cannot_fit_is_refused_with_what_to_change(nodes, options, message):
    with pytest.raises(CannotPlaceError) as caught:
        plan_actors(nodes, **options)
    assert message in str(caught.value)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="--actors must be at least 1, got 0"):
        plan_actors(_cpus(2), 0)
    with pytest.raises(ValueError, match="--gpus-per-actor must be 0 or more, got -1"):
        plan_actors(_cpus(2), gpus_per_actor=-1)
