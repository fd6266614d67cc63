"""A model repository (``--repository DIR``): two models in one torch-free server, a new version
put in service while a client keeps sending requests (none fails, none is lost), a version that
cannot be loaded reported while the served one stays, explicit unload and load through
tritonclient, and the version policies."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from effnet_runtime.portable import decode_image
from effnet_runtime.serve.metrics import ServeMetrics
from effnet_runtime.serve.predictor import Loader, load_shipped
from effnet_runtime.serve.repository import Repository
from effnet_runtime.serve.settings import ServeOptions, SettingError, VersionPolicy
from helpers.serve import CLEAN_EXIT, ServerProcess, metric, ship_tiny

SHAPES = ["circle", "square", "stripes"]
COLOURS = ["red", "green"]
TIMEOUT = 60
POLL_S = 0.3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("repository")
    root = folder / "models"
    shapes_v2 = ship_tiny(folder / "shapes-v2", SHAPES, seed=2)
    ship_tiny(root / "shapes" / "1", SHAPES, seed=0)
    ship_tiny(root / "colours" / "4", COLOURS, seed=1)
    broken = folder / "broken"
    shutil.copytree(shapes_v2, broken)
    (broken / "model.onnx").write_bytes(b"half a model file")
    picture = folder / "picture.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(picture)
    return {"folder": folder, "root": root, "shapes_v2": shapes_v2, "broken": broken, "picture": picture}


@pytest.fixture(scope="module")
def server(files):
    process = ServerProcess(["--repository", str(files["root"]), "--poll-s", str(POLL_S)],
                            files["folder"] / "server.log", torch_free=True, grpc=True)
    process.wait_ready()
    yield process
    assert process.stop() == CLEAN_EXIT, process.output()
    assert "Traceback" not in process.output()


def probabilities(folder: Path, picture: Path) -> np.ndarray:
    model = load_shipped(folder)
    return model.probabilities(model.prepare(decode_image(picture.read_bytes()), picture.name, 10**7)[None])[0]


def infer(client, name: str, picture: Path, version: str = "") -> tuple[np.ndarray, str]:
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([picture.read_bytes()], dtype=object))
    result = client.infer(name, [image], model_version=version)
    return result.as_numpy("probabilities")[0], result.get_response()["model_version"]


def index(server) -> dict[tuple[str, str], dict]:
    rows = httpclient.InferenceServerClient(server.address).get_model_repository_index()
    return {(row["name"], row.get("version", "")): row for row in rows}


def wait_for(condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def test_two_models_in_one_server(server, files):
    models = httpx.get(server.url + "/v1/models", timeout=TIMEOUT).json()["models"]
    assert [(m["name"], m["version"], m["classes"]) for m in models] == [("colours", "4", COLOURS),
                                                                       ("shapes", "1", SHAPES)]
    picture = files["picture"]
    upload = {"file": (picture.name, picture.read_bytes(), "image/png")}
    colours = httpx.post(server.url + "/v1/predict", params={"model": "colours"}, files=upload, timeout=TIMEOUT)
    assert colours.status_code == 200 and colours.json()["model"] == "colours" and colours.json()["version"] == "4"
    assert {c["class_name"] for c in colours.json()["predictions"][0]["top_k"]} == set(COLOURS)
    unnamed = httpx.post(server.url + "/v1/predict", files=upload, timeout=TIMEOUT)
    assert unnamed.status_code == 400 and "name one with ?model=NAME (colours, shapes)" in unnamed.json()["message"]
    client = httpclient.InferenceServerClient(server.address)
    for name, folder in (("colours", files["root"] / "colours" / "4"), ("shapes", files["root"] / "shapes" / "1")):
        got, version = infer(client, name, picture)
        np.testing.assert_allclose(got, probabilities(folder, picture), atol=1e-6)
        assert client.get_model_metadata(name)["versions"] == [version]
    assert {key: row["state"] for key, row in index(server).items()} == {("colours", "4"): "READY",
                                                                        ("shapes", "1"): "READY"}


def test_a_new_version_is_swapped_in_while_a_client_keeps_sending(server, files):
    """A client sends request after request while version 2 appears (copied, then renamed into
    place, as the docs say): every request is answered 200, first by version 1 then by 2."""
    answers: list[tuple[int, str]] = []
    stop = threading.Event()
    picture = files["picture"].read_bytes()

    def keep_sending() -> None:
        client = httpclient.InferenceServerClient(server.address, network_timeout=TIMEOUT)
        image = httpclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([picture], dtype=object))
        deadline = time.monotonic() + TIMEOUT
        while not stop.is_set() and time.monotonic() < deadline and len(answers) < 2000:
            try:
                version = client.infer("shapes", [image]).get_response()["model_version"]
                answers.append((200, version))
            except Exception as error:  # counted as a failure below
                answers.append((getattr(error, "status", lambda: "transport")(), str(error)))

    senders = [threading.Thread(target=keep_sending) for _ in range(3)]
    for sender in senders:
        sender.start()
    try:
        wait_for(lambda: len(answers) >= 10, "the first answers")
        staging = files["root"] / "shapes" / ".incoming"
        shutil.copytree(files["shapes_v2"], staging)
        staging.rename(files["root"] / "shapes" / "2")
        wait_for(lambda: answers and answers[-1][1] == "2", "version 2 in service")
        count = len(answers)
        wait_for(lambda: len(answers) >= count + 20, "answers from version 2")
    finally:
        stop.set()
        for sender in senders:
            sender.join(TIMEOUT)
    failures = [answer for answer in answers if answer[0] != 200]
    assert not failures, failures[:5]
    versions = [version for _, version in answers]
    assert versions[0] == "1" and versions[-1] == "2" and set(versions) == {"1", "2"}
    got, version = infer(httpclient.InferenceServerClient(server.address), "shapes", files["picture"])
    assert version == "2"
    np.testing.assert_allclose(got, probabilities(files["shapes_v2"], files["picture"]), atol=1e-6)
    rows = index(server)
    assert rows["shapes", "2"]["state"] == "READY"
    assert rows["shapes", "1"] == {"name": "shapes", "version": "1", "state": "UNAVAILABLE",
                                   "reason": "not chosen by the version policy (latest:1)"}
    metrics = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    assert metric(metrics, "effnet_model_ready", 'model="shapes",version="1"') == 0
    assert metric(metrics, "effnet_model_ready", 'model="shapes",version="2"') == 1


@pytest.mark.slow
def test_a_broken_version_is_reported_and_the_served_one_stays(server, files):
    shutil.copytree(files["broken"], files["root"] / "shapes" / "3")
    row = wait_for(lambda: "cannot load" in (reason := index(server).get(("shapes", "3"), {}).get("reason", "")) and
                   reason, "the broken version reported")
    assert row.startswith(str(files["root"] / "shapes" / "3")) and "onnxruntime cannot load the model" in row
    client = httpclient.InferenceServerClient(server.address)
    assert not client.is_model_ready("shapes", "3") and client.is_model_ready("shapes")
    assert infer(client, "shapes", files["picture"])[1] == "2"  # the served version stays
    assert client.is_server_ready()
    metrics = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    assert metric(metrics, "effnet_model_load_failures_total", 'model="shapes",version="3"') == 1
    time.sleep(3 * POLL_S)  # not tried again while its files stay the same
    metrics = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    assert metric(metrics, "effnet_model_load_failures_total", 'model="shapes",version="3"') == 1
    assert "shapes version 3" in server.output() and "cannot load the model" in server.output()
    shutil.rmtree(files["root"] / "shapes" / "3")
    wait_for(lambda: ("shapes", "3") not in index(server), "the removed version to leave the index")


def test_explicit_unload_and_load(server, files):
    http = httpclient.InferenceServerClient(server.address)
    grpc = grpcclient.InferenceServerClient(server.grpc_address)
    http.unload_model("colours")
    assert index(server)["colours", "4"] == {"name": "colours", "version": "4", "state": "UNAVAILABLE",
                                             "reason": "unloaded"}
    time.sleep(3 * POLL_S)  # polling leaves a model unloaded by request alone
    assert not http.is_model_ready("colours") and http.is_server_ready()
    refused = httpx.post(server.url + "/v2/models/colours/infer", json={"inputs": []}, timeout=TIMEOUT)
    assert refused.status_code == 404 and "unknown model 'colours'" in refused.json()["error"]
    grpc.load_model("colours")
    assert grpc.is_model_ready("colours")
    ready = grpc.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m.get("version"), m["state"]) for m in ready} >= {("colours", "4", "READY")}
    missing = httpx.post(server.url + "/v2/repository/models/nothing/load", timeout=TIMEOUT)
    assert missing.status_code == 400 and "no folder" in missing.json()["error"]
    only_ready = httpx.post(server.url + "/v2/repository/index", json={"ready": True}, timeout=TIMEOUT).json()
    assert all(row["state"] == "READY" for row in only_ready) and len(only_ready) == 2


def test_version_policies_choose_the_versions_served(files, tmp_path):
    for version in (1, 2, 5):
        shutil.copytree(files["shapes_v2"], tmp_path / "shapes" / str(version))
    loader = Loader("effnet_runtime.serve.predictor:load_shipped")

    async def served(policy: str) -> list[str]:
        repository = Repository(ServeOptions(), ServeMetrics(), loader, tmp_path, VersionPolicy.parse(policy))
        await repository.start()
        try:
            return sorted(repository.models["shapes"], key=int)
        finally:
            await repository.close()

    assert asyncio.run(served("latest")) == ["5"]
    assert asyncio.run(served("latest:2")) == ["2", "5"]
    assert asyncio.run(served("all")) == ["1", "2", "5"]
    assert asyncio.run(served("specific:1,5,7")) == ["1", "5"]
    for bad in ("newest", "latest:0", "latest:x", "specific:", "specific:1,a", "all:2"):
        with pytest.raises(SettingError, match="is not one of latest, latest:N"):
            VersionPolicy.parse(bad)
    assert str(VersionPolicy.parse("specific:3,1")) == "specific:1,3"
