"""Connecting to Ray: without the extra, a message saying what to install; and the engine on a
two-node cluster simulated on this machine (two 1-CPU nodes, where Ray Data's defaults wait
forever), joined through Ray Client (``ray://``): the same predictions as ``effnet predict``."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import pytest

from effnet.errors import ConfigError
from effnet.predict.ray_cluster import require_ray
from helpers.ray import assert_matches_effnet_predict, output_records, ray_environment, shared_inputs, short_temp_dir


def test_without_the_ray_extra_the_engine_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.data", None)  # an import of it fails, as when it is not installed
    with pytest.raises(ConfigError, match=r"--engine ray needs Ray Data, which is not installed here .*"
                                          r"pip install 'effnet\[ray\]'"):
        require_ray()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes():
    """Two 1-CPU nodes with a Ray Client server on the head; yields the ``ray://`` address."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    temp, port = short_temp_dir(), _free_port()
    with ray_environment():
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "object_store_memory": 128 * 2**20, "temp_dir": temp,
            "ray_client_server_port": port})
        try:
            cluster.add_node(num_cpus=1, object_store_memory=128 * 2**20)
            cluster.wait_for_nodes()
            yield f"ray://127.0.0.1:{port}"
        finally:
            cluster.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_nodes_through_ray_client_give_effnet_predicts_results(two_nodes, tmp_path_factory, tmp_path):
    import ray

    from effnet.predict.ray_engine import predict_on_ray

    inputs = shared_inputs(tmp_path_factory)
    images = sorted(Path(inputs["val"]).rglob("*.png"))[::5]  # 200 of the digits: both nodes take a share
    bad = sorted(Path(inputs["bad"]).iterdir())
    reference = {path: record for path, record in inputs["reference"].items() if Path(path) in {*images, *bad}}
    messages: list[str] = []
    summary = predict_on_ray([*images, inputs["bad"]], tmp_path / "out", checkpoint=inputs["checkpoint"],
                             ray_address=two_nodes, progress=False, report=messages.append)
    assert "(2 node(s), 2 CPUs): 2 actor(s) x 0.75 CPU" in messages[0]
    assert (summary.written, summary.failed) == (len(images) + 3, 3)
    assert_matches_effnet_predict(output_records(tmp_path / "out"), reference)
    assert not ray.is_initialized()  # the client disconnected
