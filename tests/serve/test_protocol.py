"""The Open Inference Protocol, spoken by clients nobody here wrote: ``tritonclient.http`` and
``tritonclient.grpc`` against the torch-free server (``effnet-serve``, here with torch and effnet
blocked from import) on loopback ports. Liveness, readiness, metadata, inference with FP32 and
BYTES inputs, binary data both ways, the classification extension (whose strings tritonclient
does not check, so these tests do), errors in the protocol's form, the API key on /v1, /v2 and
gRPC alike, and gRPC's other input form (``bytes_contents``) and message size limit."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from effnet_runtime.portable import decode_image
from effnet_runtime.serve.predictor import load_shipped
from helpers.serve import CLASSIFICATION, CLEAN_EXIT, ServerProcess, metric, png_bytes, ship_tiny

CLASSES = ["circle", "square", "stripes"]
KEY = "0pen-sesame"
MAX_UPLOAD_MB = 0.3
TIMEOUT = 60
MODEL = "tiny_b0"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("protocol")
    rng = np.random.default_rng(3)
    images = []
    for index in range(3):
        path = folder / f"picture{index}.{'jpg' if index else 'png'}"
        Image.fromarray(rng.integers(0, 256, (40 + 8 * index, 36, 3), dtype=np.uint8)).save(path)
        images.append(path)
    return {"folder": folder, "artifact": ship_tiny(folder / "shipped", CLASSES), "images": images}


@pytest.fixture(scope="module")
def server(files):
    process = ServerProcess(["--artifact", str(files["artifact"]), "--max-upload-mb", str(MAX_UPLOAD_MB),
                             "--max-files", "8"], files["folder"] / "server.log", env={"EFFNET_API_KEY": KEY},
                            torch_free=True, grpc=True)
    process.wait_ready()
    yield process
    assert process.stop() == CLEAN_EXIT, process.output()
    assert "Traceback" not in process.output()


@pytest.fixture(scope="module")
def expected(files):
    """The shipped model's probabilities for the test pictures, computed in this process."""
    model = load_shipped(files["artifact"])
    batch = np.stack([model.prepare(decode_image(p.read_bytes(), p.name), p.name, 10**7) for p in files["images"]])
    return {"batch": batch, "probabilities": model.probabilities(batch)}


CLIENTS = {"http": lambda server: httpclient.InferenceServerClient(server.address),
           "grpc": lambda server: grpcclient.InferenceServerClient(server.grpc_address)}

def key() -> dict[str, str]:
    """The API key header (a new dict each time: tritonclient.http adds its own headers to the one it is
    given); gRPC metadata keys must be lower case."""
    return {"x-api-key": KEY}



def module_of(kind: str):
    return httpclient if kind == "http" else grpcclient


def encoded(files) -> np.ndarray:
    return np.array([path.read_bytes() for path in files["images"]], dtype=object)


@pytest.mark.parametrize("kind", CLIENTS)
def test_health_and_metadata(server, kind):
    client = CLIENTS[kind](server)
    assert client.is_server_live() and client.is_server_ready()  # open without the key
    assert client.is_model_ready(MODEL, headers=key()) and client.is_model_ready(MODEL, "1", headers=key())
    assert not client.is_model_ready("nothing", headers=key()) and not client.is_model_ready(MODEL, "2",
                                                                                                headers=key())
    as_json = {"as_json": True} if kind == "grpc" else {}
    meta = client.get_server_metadata(headers=key(), **as_json)
    model = client.get_model_metadata(MODEL, headers=key(), **as_json)
    if kind == "grpc":
        for tensor in model["inputs"] + model["outputs"]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]  # protobuf's JSON writes int64 as strings
    assert meta["name"] == "effnet" and "classification" in meta["extensions"]
    assert model == {"name": MODEL, "versions": ["1"], "platform": "onnxruntime_onnx",
                     "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                                {"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}],
                     "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("kind", CLIENTS)
def test_infer_fp32_and_bytes_with_and_without_binary_data(server, files, expected, kind, binary):
    client, module = CLIENTS[kind](server), module_of(kind)
    extra = {"binary_data": binary} if kind == "http" else {}
    tensor = module.InferInput("input", list(expected["batch"].shape), "FP32")
    tensor.set_data_from_numpy(expected["batch"], **extra)
    image = module.InferInput("image", [len(files["images"])], "BYTES")
    image.set_data_from_numpy(encoded(files))  # BYTES pictures go binary (JSON would need UTF-8 text)
    for inputs in ([tensor], [image]):
        result = client.infer(MODEL, inputs, outputs=[module.InferRequestedOutput("probabilities", **extra)],
                              request_id="req-7", headers=key())
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-6)
        response = result.get_response()
        assert (response["id"] if kind == "http" else response.id) == "req-7"
        assert (response["model_version"] if kind == "http" else response.model_version) == "1"
        if kind == "http":
            assert ("parameters" in response["outputs"][0]) == binary  # binary_data_size, or data in the JSON


@pytest.mark.parametrize("kind", CLIENTS)
def test_classification_gives_triton_strings(server, files, expected, kind):
    client, module = CLIENTS[kind](server), module_of(kind)
    image = module.InferInput("image", [len(files["images"]), 1], "BYTES")  # [N, 1] as well as [N]
    image.set_data_from_numpy(encoded(files).reshape(-1, 1))
    for k, binary in ((2, True), (5, False)):
        extra = {"binary_data": binary} if kind == "http" else {}
        output = module.InferRequestedOutput("probabilities", class_count=k, **extra)
        rows = client.infer(MODEL, [image], outputs=[output], headers=key()).as_numpy("probabilities")
        assert rows.shape == (len(files["images"]), min(k, len(CLASSES)))
        for row, probabilities in zip(rows, expected["probabilities"], strict=True):
            parts = [CLASSIFICATION.match(item.decode() if isinstance(item, bytes) else item) for item in row]
            assert all(parts), row
            scores = [float(p.group(1)) for p in parts]
            assert scores == sorted(scores, reverse=True)
            for part in parts:
                index = int(part.group(2))
                assert part.group(3) == CLASSES[index]
                assert part.group(1) == f"{probabilities[index]:f}"


def test_http_errors_are_in_the_protocol_form(server, files):
    image = files["images"][0].read_bytes()
    infer = f"{server.url}/v2/models/{MODEL}/infer"
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(image) + 4}}]}).encode()
    binary = header + len(image).to_bytes(4, "little") + image
    cases = [
        (httpx.post(infer, content=b"{", headers=key()), 400, "not valid JSON"),
        (httpx.post(infer, json={"inputs": []}, headers=key()), 400, 'non-empty "inputs"'),
        (httpx.post(infer, json={"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32",
                                             "data": [0.0] * 192}]}, headers=key()), 400, "shape must be [N,3,32,32]"),
        (httpx.post(infer, json={"inputs": [{"name": "input", "shape": [10**9, 3, 32, 32], "datatype": "FP32",
                                             "data": [0.0] * 3}]}, headers=key()), 400, "3 numbers, shape"),
        (httpx.post(infer, content=json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                                           "data": [float("nan")] * 3072}]}), headers=key()), 400,
         "NaN or infinite"),
        (httpx.post(infer, json={"inputs": [{"name": "image", "shape": [1], "datatype": "INT8", "data": [1]}]},
                    headers=key()), 400, "datatype 'INT8' is not accepted"),
        (httpx.post(infer, json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
                    headers=key()), 415, "image[0]: not an image"),
        (httpx.post(infer, content=binary[:-5], headers={**key(), "Inference-Header-Content-Length":
                                                         str(len(header))}), 400, "runs past"),
        (httpx.post(infer, content=binary + b"xx", headers={**key(), "Inference-Header-Content-Length":
                                                            str(len(header))}), 400, "2 bytes of binary data follow"),
        (httpx.post(infer, content=binary, headers={**key(), "Inference-Header-Content-Length": "-5"}), 400,
         "is not a byte count"),
        (httpx.post(f"{server.url}/v2/models/other/infer", content=binary, headers=key()), 404,
         "unknown model 'other'"),
        (httpx.post(f"{server.url}/v2/models/{MODEL}/versions/9/infer", content=binary, headers=key()), 404,
         "has no version '9'"),
        (httpx.post(infer, content=binary, headers={"Inference-Header-Content-Length": str(len(header))}), 401,
         "needs an API key"),
        (httpx.post(infer, content=b"x" * int(MAX_UPLOAD_MB * 1e6 + 1), headers=key()), 413, "exceeds the limit"),
        (httpx.post(infer, content=gzip.compress(b" " * int(MAX_UPLOAD_MB * 2e6)), headers={
            **key(), "Content-Encoding": "gzip"}), 413, "exceeds the limit"),
        (httpx.post(f"{server.url}/v2/repository/models/{MODEL}/unload", headers=key()), 400,
         "serves one model and cannot unload it"),
        (httpx.get(f"{server.url}/v2/models/{MODEL}/infer", headers=key()), 405, "method GET is not allowed"),
        (httpx.get(f"{server.url}/v2/nothing"), 404, "no endpoint /v2/nothing"),
    ]
    for answer, status, message in cases:
        assert answer.status_code == status, answer.text
        assert list(answer.json()) == ["error"] and message in answer.json()["error"], answer.text
    compressed = httpx.post(infer, content=gzip.compress(binary), headers={
        **key(), "Inference-Header-Content-Length": str(len(header)), "Content-Encoding": "gzip"})
    assert compressed.status_code == 200, compressed.text
    metrics = httpx.get(server.url + "/metrics").text
    assert metric(metrics, "effnet_requests_total", 'endpoint="/v2/models/{name}/infer",status="413"') >= 2
    assert 'status="500"' not in metrics


def test_tritonclient_errors_carry_the_message(server, files):
    client = httpclient.InferenceServerClient(server.address)
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([b"not a picture"], dtype=object))
    with pytest.raises(InferenceServerException, match="image\\[0\\]: not an image") as refused:
        client.infer(MODEL, [image], headers=key())
    assert refused.value.status() == "415"
    with pytest.raises(InferenceServerException, match="unknown output 'logits'"):  # checked before decoding
        client.infer(MODEL, [image], outputs=[httpclient.InferRequestedOutput("logits")], headers=key())
    grpc_client = grpcclient.InferenceServerClient(server.grpc_address)
    grpc_image = grpcclient.InferInput("image", [1], "BYTES")
    grpc_image.set_data_from_numpy(np.array([b"not a picture"], dtype=object))
    with pytest.raises(InferenceServerException, match="not an image") as refused:
        grpc_client.infer(MODEL, [grpc_image], headers=key())
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="unknown model 'other'") as refused:
        grpc_client.infer("other", [grpc_image], headers=key())
    assert refused.value.status() == "StatusCode.NOT_FOUND"


def test_the_api_key_guards_v1_v2_and_grpc(server, files):
    image = files["images"][0]
    for headers, status in (({}, 401), ({"X-API-Key": "guess"}, 403), ({"Authorization": f"Bearer {KEY}"}, 200)):
        v1 = httpx.post(server.url + "/v1/predict", files={"file": (image.name, image.read_bytes())}, headers=headers)
        v2 = httpx.get(f"{server.url}/v2/models/{MODEL}", headers=headers)
        assert (v1.status_code, v2.status_code) == (status, status), (v1.text, v2.text)
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200  # probes stay open
    client = grpcclient.InferenceServerClient(server.grpc_address)
    for headers, code in (({}, "UNAUTHENTICATED"), ({"x-api-key": "guess"}, "PERMISSION_DENIED")):
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata(MODEL, headers=headers)
        assert refused.value.status() == f"StatusCode.{code}"
    assert client.get_model_metadata(MODEL, headers={"authorization": f"Bearer {KEY}"}).name == MODEL
    metrics = httpx.get(server.url + "/metrics").text
    assert metric(metrics, "effnet_grpc_requests_total", 'code="UNAUTHENTICATED",method="ModelMetadata"') >= 1


def test_grpc_bytes_contents_and_the_message_size_limit(server, files, expected):
    """Clients other than tritonclient send BYTES one element per ``bytes_contents`` entry; the
    answer still comes in ``raw_output_contents``. A message over --max-upload-mb is refused."""
    with grpc.insecure_channel(server.grpc_address, options=[("grpc.max_send_message_length", 2**30)]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        tensor = request.inputs.add(name="image", datatype="BYTES", shape=[len(files["images"])])
        tensor.contents.bytes_contents.extend(path.read_bytes() for path in files["images"])
        response = stub.ModelInfer(request, metadata=tuple(key().items()), timeout=TIMEOUT)
        assert list(response.outputs[0].shape) == [3, 3] and response.outputs[0].datatype == "FP32"
        got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(3, 3)
        np.testing.assert_allclose(got, expected["probabilities"], atol=1e-6)
        request.inputs[0].contents.bytes_contents[0] = b"x" * int(MAX_UPLOAD_MB * 1e6 + 100)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, metadata=tuple(key().items()), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def peak_mb(pid: int) -> float:
    """The peak resident memory of process ``pid`` so far (``VmHWM``), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def test_a_very_thin_image_is_413_at_bounded_memory(server):
    """A 1 x 100,000 PNG of a few hundred bytes would be resized to 256 x 25.6M pixels (about 20 GB
    as floats): at the default --max-pixels it is refused with 413 over /v1, /v2 and gRPC, quickly,
    and the server's peak memory hardly moves."""
    thin = png_bytes(np.zeros((1, 100_000, 3), dtype=np.uint8))
    assert len(thin) < 1000
    before = peak_mb(server.process.pid)
    start = time.perf_counter()
    v1 = httpx.post(server.url + "/v1/predict", files={"file": ("thin.png", thin, "image/png")}, headers=key(),
                    timeout=TIMEOUT)
    assert v1.status_code == 413 and v1.json()["error"] == "too_many_pixels", v1.text
    assert "thin.png: 100000x1 pixels would be resized to" in v1.json()["message"]
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([thin], dtype=object))
    with pytest.raises(InferenceServerException, match="too thin to classify") as refused:
        httpclient.InferenceServerClient(server.address).infer(MODEL, [image], headers=key())
    assert refused.value.status() == "413"
    grpc_image = grpcclient.InferInput("image", [1], "BYTES")
    grpc_image.set_data_from_numpy(np.array([thin], dtype=object))
    with pytest.raises(InferenceServerException, match="too thin to classify"):
        grpcclient.InferenceServerClient(server.grpc_address).infer(MODEL, [grpc_image], headers=key())
    assert time.perf_counter() - start < 10
    assert peak_mb(server.process.pid) - before < 50
