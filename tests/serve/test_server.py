"""``effnet serve`` with PyTorch models: a real server on a loopback port, spoken to over HTTP and
by tritonclient's HTTP and gRPC clients. Its answers equal ``effnet predict``'s; bad input is
refused with a 4xx naming the problem (never a 500, a hang or a traceback); concurrent requests
share batches; SIGTERM answers the requests in flight; bad settings and a port in use are one
line and exit 2 before any model is loaded. The PyTorch predictors and the batcher are also
tested on their own."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from effnet.cli import main
from effnet.errors import ConfigError, ExitCode
from effnet.serve import TorchPredictor, load_predictor, load_version
from effnet.weights.io import save_model
from effnet_runtime.serve.batching import Batcher, QueueFullError
from effnet_runtime.serve.cli import EXIT_REFUSED
from effnet_runtime.serve.predictor import ModelLoadError, load_shipped
from helpers.deploy import tiny_model
from helpers.serve import (
    CLASSIFICATION,
    CLEAN_EXIT,
    SOURCES,
    ServerProcess,
    metric,
    metric_total,
    photos,
    png_bytes,
    ship_tiny,
)

CLASSES = ["circle", "square", "stripes"]
CATS = {"tiger cat", "tabby", "Egyptian cat"}
KEY = "s3cret-key"
AUTH = {"X-API-Key": KEY}
MAX_PIXELS = 20_000
MAX_FILES = 4
TIMEOUT = 60


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)  # module fixtures are made before conftest's per-test seed
    model = tiny_model(num_classes=len(CLASSES))
    model.describe(class_names=CLASSES)
    checkpoint = save_model(model, folder / "tiny.safetensors")
    rng = np.random.default_rng(0)
    images = []
    for index in range(5):
        path = folder / f"picture{index}.{'jpg' if index == 4 else 'png'}"
        Image.fromarray(rng.integers(0, 256, (40 + 4 * index, 48, 3), dtype=np.uint8)).save(path)
        images.append(path)
    return {"folder": folder, "checkpoint": checkpoint, "images": images,
            "artifact": ship_tiny(folder / "shipped", CLASSES)}


@pytest.fixture(scope="module")
def server(files):
    process = ServerProcess(["--checkpoint", str(files["checkpoint"]), "--max-batch", "8", "--max-wait-ms", "300",
                             "--max-files", str(MAX_FILES), "--max-upload-mb", "0.05", "--max-pixels",
                             str(MAX_PIXELS)], files["folder"] / "server.log", env={"EFFNET_API_KEY": KEY})
    process.wait_ready()
    yield process
    assert process.stop() == CLEAN_EXIT, process.output()
    assert "Traceback" not in process.output()


def upload(path) -> tuple:
    return ("file", (path.name, path.read_bytes(), "image/png"))


def post(server, files=None, **options) -> httpx.Response:
    options.setdefault("headers", AUTH)
    return httpx.post(server.url + "/v1/predict", files=files, timeout=TIMEOUT, **options)


# ---------------------------------------------------------------------------- answers
@pytest.mark.slow
def test_answers_equal_effnet_predict_over_v1_http_and_grpc(files, capsys):
    """Real ImageNet weights on real photos (colour and greyscale, PNG and JPEG), so that
    probabilities differ between pictures and a mix-up or a preprocessing difference shows;
    asked through /v1 (multipart and raw body) and tritonclient (HTTP binary data, gRPC raw
    contents, classification)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    pictures = photos(files["folder"])
    assert main(["predict", *map(str, pictures), "--model", "efficientnet_lite0", "--format", "json", "--top-k", "3",
                 "--device", "cpu", "--no-progress"]) == 0
    expected = json.loads(capsys.readouterr().out)
    server = ServerProcess(["--model", "efficientnet_lite0"], files["folder"] / "lite0.log", grpc=True).wait_ready()
    encoded = np.array([path.read_bytes() for path in pictures], dtype=object)
    try:
        answer = post(server, [upload(path) for path in pictures[:4]], params={"top_k": 3}, headers={})
        raw = post(server, content=pictures[4].read_bytes(), headers={"Content-Type": "image/jpeg"},
                   params={"top_k": 3})
        results = {}
        for name, client_module, address in (("http", httpclient, server.address),
                                             ("grpc", grpcclient, server.grpc_address)):
            client = client_module.InferenceServerClient(address)
            image = client_module.InferInput("image", [len(pictures)], "BYTES")
            image.set_data_from_numpy(encoded)
            outputs = [client_module.InferRequestedOutput("probabilities", class_count=3)]
            results[name] = (client.infer("efficientnet_lite0", [image], outputs=outputs).as_numpy("probabilities"),
                             client.infer("efficientnet_lite0", [image]).as_numpy("probabilities"))
    finally:
        assert server.stop() == CLEAN_EXIT, server.output()
    assert answer.status_code == 200 and raw.status_code == 200, (answer.text, raw.text)
    body = answer.json()
    assert body["model"] == "efficientnet_lite0" and body["runtime"] == "torch" and body["time_ms"] > 0
    got = body["predictions"] + [{**raw.json()["predictions"][0], "file": pictures[4].name}]
    assert [p["file"] for p in got] == [path.name for path in pictures]
    for served, reference in zip(got, expected, strict=True):
        assert [c["class_index"] for c in served["top_k"]] == [c["class_index"] for c in reference["predictions"]]
        assert [c["class_name"] for c in served["top_k"]] == [c["class_name"] for c in reference["predictions"]]
        np.testing.assert_allclose([c["probability"] for c in served["top_k"]],
                                   [c["probability"] for c in reference["predictions"]], atol=1e-5)
    assert got[0]["top_k"][0]["class_name"] in CATS and got[1]["top_k"][0]["class_name"] == "espresso"
    for name, (classified, probabilities) in results.items():
        assert classified.shape == (len(pictures), 3) and probabilities.shape == (len(pictures), 1000), name
        for row, all_classes, reference in zip(classified, probabilities, expected, strict=True):
            parts = [CLASSIFICATION.match(item.decode()) for item in row]
            assert all(parts), (name, row)
            top = reference["predictions"]
            assert [int(p.group(2)) for p in parts] == [c["class_index"] for c in top], name
            assert [p.group(3) for p in parts] == [c["class_name"] for c in top], name
            np.testing.assert_allclose([float(p.group(1)) for p in parts], [c["probability"] for c in top], atol=2e-6)
            np.testing.assert_allclose(all_classes[[c["class_index"] for c in top]], [c["probability"] for c in top],
                                       atol=1e-5)


def test_model_health_and_page(server):
    model = httpx.get(server.url + "/v1/model", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT).json()
    assert model["classes"] == CLASSES and model["runtime"] == "torch" and model["num_classes"] == 3
    assert model["preprocessing"]["resolution"] == 32 and model["limits"]["max_batch"] == 8
    assert model["name"] == "efficientnet_b0" and model["version"] == "1"
    assert KEY not in json.dumps(model)
    assert httpx.get(server.url + "/healthz", timeout=TIMEOUT).json() == {"status": "ok", "models": ["efficientnet_b0"]}
    page = httpx.get(server.url + "/", timeout=TIMEOUT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "v1/predict" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


def test_top_k_defaults_to_five_capped_at_the_classes_and_is_checked(server, files):
    assert len(post(server, [upload(files["images"][0])]).json()["predictions"][0]["top_k"]) == 3
    one = post(server, [upload(files["images"][0])], data={"top_k": "1"})
    assert len(one.json()["predictions"][0]["top_k"]) == 1
    for bad in ("zero", "0", "\u00b2", "\u0663", "9" * 5000, "-1", "1.5"):  # superscript two, Arabic-Indic three
        answer = post(server, [upload(files["images"][0])], params={"top_k": bad})
        assert answer.status_code == 400, (bad[:10], answer.text)
        assert answer.json()["error"] == "bad_top_k" and len(answer.text) < 400
    metrics = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    assert 'status="500"' not in metrics


# ------------------------------------------------------------------------- bad input
def bomb() -> bytes:
    """A small file that decodes to many pixels: 400 x 400 of one colour, a few hundred bytes."""
    return png_bytes(np.zeros((400, 400, 3), dtype=np.uint8))


BAD_UPLOADS = {
    "not an image": (("notes.png", b"these are words, not pixels" * 4, "image/png"), 415, "not_an_image",
                     "notes.png: not an image"),
    "zero bytes": (("empty.png", b"", "image/png"), 400, "empty", "empty.png: empty file (0 bytes)"),
    "truncated": (("cut.png", None, "image/png"), 422, "corrupt", "cut.png: corrupt or truncated"),
    "decompression bomb": (("bomb.png", bomb(), "image/png"), 413, "too_many_pixels",
                           f"400x400 = 160,000 pixels exceeds the limit of {MAX_PIXELS:,}"),
    "too thin to resize": (("thin.png", png_bytes(np.zeros((1, 5000, 3), dtype=np.uint8)), "image/png"), 413,
                           "too_many_pixels", "thin.png: 5000x1 pixels would be resized to"),
    "wrong part type": (("notes.txt", b"plain text", "text/plain"), 415, "unsupported_media_type",
                        "notes.txt: content type text/plain is not an image"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_uploads_get_4xx_naming_the_problem(server, files, case):
    (name, data, content_type), status, code, message = BAD_UPLOADS[case]
    if data is None:
        whole = files["images"][0].read_bytes()
        data = whole[: len(whole) // 2]
    answer = post(server, [("file", (name, data, content_type)), upload(files["images"][0])])
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == code and message in answer.json()["message"]


def test_a_very_thin_image_is_refused_before_it_is_resized(files):
    """A 1 x 100,000 PNG (a few hundred bytes) would become 256 x 25.6M pixels: 413 at once, at the
    default limits, from the PyTorch preprocessing as from the torch-free one."""
    thin = png_bytes(np.zeros((1, 100_000, 3), dtype=np.uint8))
    assert len(thin) < 1000
    predictor = load_predictor(checkpoint=str(files["checkpoint"]), device="cpu")
    shipped = load_shipped(files["artifact"])
    for prepared in (predictor, shipped):
        start = time.perf_counter()
        from effnet_runtime.portable import ImageReadError, decode_image

        with pytest.raises(ImageReadError, match="too thin to classify") as refused:
            prepared.prepare(decode_image(thin, "thin.png"), "thin.png", 50_000_000)
        assert refused.value.kind == "too_many_pixels" and time.perf_counter() - start < 5


def test_too_big_too_many_wrong_type_keys_and_routes_are_refused_in_json(server, files):
    too_big = np.random.default_rng(1).integers(0, 256, (120, 120, 3), dtype=np.uint8)  # ~43 kB > 0.05 MB with 2
    big = png_bytes(too_big)
    checks = [
        (post(server, [("file", ("a.png", big, "image/png")), ("file", ("b.png", big, "image/png"))]),
         413, "too_large", "exceeds the limit of 0.05 MB"),
        (post(server, content=iter([big, big]), headers={**AUTH, "Content-Type": "image/png"}),  # chunked, no length
         413, "too_large", "exceeds the limit of 0.05 MB"),
        (post(server, [upload(files["images"][0])] * (MAX_FILES + 1)), 400, "too_many_files",
         f"more than {MAX_FILES} files in one request; send at most {MAX_FILES}"),
        (post(server, json={"image": "cat.jpg"}), 415, "unsupported_media_type", "application/json is not accepted"),
        (post(server, content=b"raw", headers=AUTH), 415, "unsupported_media_type", "(none) is not accepted"),
        (post(server, data={"top_k": "3"}), 415, "unsupported_media_type", "x-www-form-urlencoded is not accepted"),
        (post(server, content=b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n--b--\r\n',
              headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"}), 400, "no_image",
         "the form holds no file"),
        (post(server, [upload(files["images"][0])], params={"model": "other"}), 404, "unknown_model",
         "unknown model 'other' (models in service: efficientnet_b0)"),
        (post(server, [upload(files["images"][0])], headers={}), 401, "missing_api_key", "needs an API key"),
        (post(server, [upload(files["images"][0])], headers={"X-API-Key": "guess"}), 403, "wrong_api_key",
         "not the one"),
        (httpx.get(server.url + "/v1/model", timeout=TIMEOUT), 401, "missing_api_key", "X-API-Key"),
        (httpx.get(server.url + "/v1/nothing", timeout=TIMEOUT), 404, "not_found", "no endpoint /v1/nothing"),
        (httpx.delete(server.url + "/v1/predict", timeout=TIMEOUT), 405, "method_not_allowed",
         "method DELETE is not allowed on /v1/predict; use POST"),
    ]
    for answer, status, code, message in checks:
        assert answer.status_code == status, answer.text
        assert answer.json() == {"error": code, "message": answer.json()["message"]}, answer.text
        assert answer.json()["error"] == code and message in answer.json()["message"], answer.text
    assert checks[-5][0].headers["www-authenticate"] == "Bearer"
    assert checks[-1][0].headers["allow"] == "POST"
    protocol = [httpx.get(server.url + "/v2/nothing", timeout=TIMEOUT),
                httpx.put(server.url + "/v2/health/live", timeout=TIMEOUT)]
    assert [(a.status_code, a.json()) for a in protocol] == [
        (404, {"error": "no endpoint /v2/nothing"}),
        (405, {"error": "method PUT is not allowed on /v2/health/live; use GET, HEAD"})]
    assert post(server, [upload(files["images"][0])]).status_code == 200  # still serving
    metrics = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    assert metric(metrics, "effnet_requests_total", 'endpoint="/v1/predict",status="413"') >= 2
    assert metric(metrics, "effnet_requests_total", 'endpoint="/v1/predict",status="401"') >= 1
    assert 'status="500"' not in metrics


def test_a_client_gone_mid_body_is_counted_apart_without_a_traceback(server, files):
    before = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as connection:
        connection.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() +
                           b"\r\nContent-Type: image/png\r\nContent-Length: 40000\r\n\r\n" + b"\x89PNG" * 100)
        time.sleep(0.5)
    deadline = time.monotonic() + TIMEOUT
    label = 'endpoint="/v1/predict",status="499"'
    while metric(httpx.get(server.url + "/metrics", timeout=TIMEOUT).text, "effnet_requests_total", label) \
            <= metric(before, "effnet_requests_total", label):
        assert time.monotonic() < deadline, "the disconnect was not counted as 499"
        time.sleep(0.1)
    assert post(server, [upload(files["images"][0])]).status_code == 200
    assert "Traceback" not in server.output() and "Exception in ASGI" not in server.output()


# ------------------------------------------------------------------------ batching
def test_concurrent_requests_share_batches(server, files):
    labels = 'model="efficientnet_b0",version="1"'
    before = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda path: post(server, [upload(path)]), files["images"] * 2))
    assert [a.status_code for a in answers] == [200] * 10
    after = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    images = metric(after, "effnet_batch_size_sum", labels) - metric(before, "effnet_batch_size_sum", labels)
    batches = metric(after, "effnet_batch_size_count", labels) - metric(before, "effnet_batch_size_count", labels)
    assert images == 10 and batches < 10, (images, batches)  # some batch held several requests
    assert metric(after, "effnet_images_total", labels) >= 10
    assert metric(after, "effnet_queue_depth", labels) == 0
    assert metric_total(after, "process_resident_memory_bytes") > 0


# ----------------------------------------------------- shipped folder, queue, SIGTERM
@pytest.mark.slow
def test_shipped_folder_full_queue_and_sigterm_answer_requests_in_flight(files):
    server = ServerProcess(["--artifact", str(files["artifact"]), "--max-batch", "64", "--max-wait-ms", "4000",
                            "--max-queue", "6", "--max-files", "2"], files["folder"] / "sigterm.log",
                            torch_free=True)
    server.wait_ready()
    try:
        model = httpx.get(server.url + "/v1/model", timeout=TIMEOUT).json()
        assert model["name"] == "tiny_b0" and model["runtime"] == "onnxruntime" and model["classes"] == CLASSES
        pool = ThreadPoolExecutor(3)
        in_flight = [pool.submit(post, server, [upload(files["images"][i]), upload(files["images"][i + 1])])
                     for i in range(3)]
        deadline = time.monotonic() + TIMEOUT
        while metric_total(httpx.get(server.url + "/metrics", timeout=TIMEOUT).text, "effnet_queue_depth") < 6:
            assert time.monotonic() < deadline, "the requests never reached the queue"
            assert not any(f.done() for f in in_flight), [f.result().text for f in in_flight if f.done()]
            time.sleep(0.05)
        full = post(server, [upload(files["images"][0])])
        assert full.status_code == 503 and full.json()["error"] == "queue_full" and full.headers["retry-after"] == "1"
        server.terminate()
        answers = [f.result(timeout=TIMEOUT) for f in in_flight]
        pool.shutdown()
        assert server.process.wait(TIMEOUT) == CLEAN_EXIT, server.output()
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
    assert all(a.json()["runtime"] == "onnxruntime" for a in answers)
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=5)


@pytest.mark.slow
def test_two_workers_share_one_port(files):
    server = ServerProcess(["--artifact", str(files["artifact"]), "--workers", "2"], files["folder"] / "w.log",
                           torch_free=True)
    server.wait_ready(in_a_row=20)
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda path: post(server, [upload(path)], headers={}), files["images"]))
    finally:
        assert server.stop() in (CLEAN_EXIT, -15), server.output()
    assert [a.status_code for a in answers] == [200] * 5


# --------------------------------------------------------------- the command line
NUMERIC_FLAGS = ["--port", "--grpc-port", "--workers", "--threads", "--max-batch", "--max-wait-ms", "--max-queue",
                 "--max-files", "--max-upload-mb", "--max-pixels", "--decode-threads", "--poll-s"]


def run_cli(argv: list[str]) -> int:
    """``effnet ARGV``'s exit code, argparse's refusals (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exited:
        return exited.code


@pytest.mark.parametrize("flag", NUMERIC_FLAGS)
def test_every_numeric_flag_refuses_non_finite_and_absurd_values(capsys, files, flag):
    for value in ("inf", "-inf", "nan", "1e309", "-1", "99999999999", "1e12"):
        code = run_cli(["serve", "--checkpoint", str(files["checkpoint"]), f"{flag}={value}"])
        assert code == ExitCode.REFUSED, value
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith(f"effnet serve: error: argument {flag}: must be "), lines[-1]
        assert "Traceback" not in "\n".join(lines)


def test_cli_refuses_bad_settings_with_one_line(capsys, files):
    assert EXIT_REFUSED == ExitCode.REFUSED
    cases = [(["serve"], "no model to serve: give --model NAME, --checkpoint"),
             (["serve", "--checkpoint", str(files["checkpoint"]), "--max-batch", "0"], "--max-batch: must be a whole"),
             (["serve", "--artifact", str(files["folder"] / "nowhere"), "--port", "0"], "does not exist"),
             (["serve", "--repository", str(files["folder"] / "nowhere")], "is not a folder"),
             (["serve", "--repository", str(files["folder"]), "--checkpoint", "x"], "drop --model, --checkpoint"),
             (["serve", "--checkpoint", str(files["checkpoint"]), "--version-policy", "newest"], "version policy"),
             (["serve", "--checkpoint", str(files["checkpoint"]), "--workers", "2", "--grpc-port", "0"],
              "a repository and gRPC run in one process"),
             (["serve", "--checkpoint", str(files["checkpoint"]), "--host", "no.such.host.invalid"],
              "cannot use address 'no.such.host.invalid'")]
    for argv, message in cases:
        assert run_cli(argv) == ExitCode.REFUSED, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("effnet serve: error: "), err


def test_serve_help_needs_no_pytorch():
    code = ("import sys; from effnet.cli import main\ntry:\n    main(['serve', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('TORCH', 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(SOURCES)})
    assert done.returncode == 0 and "--grpc-port" in done.stdout and done.stdout.strip().endswith("TORCH False")


def test_a_port_in_use_is_one_line_and_exit_2_before_loading(capsys, files):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for argv in (["--port", port], ["--port", "0", "--grpc-port", port]):
            start = time.perf_counter()
            assert main(["serve", "--model", "efficientnet_b7", *argv]) == ExitCode.REFUSED  # B7 would take long
            assert time.perf_counter() - start < 10
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [f"effnet serve: error: cannot listen on 127.0.0.1:{port}: Address already in use "
                           "(choose another --port, or stop what uses it)"]


# ---------------------------------------------------------------- predictors, in process
@pytest.mark.slow
def test_runtimes_agree_with_torch(files, tmp_path):
    torch_predictor = load_predictor(checkpoint=str(files["checkpoint"]), device="cpu")
    assert isinstance(torch_predictor, TorchPredictor) and torch_predictor.labels == CLASSES
    batch = np.stack([torch_predictor.prepare(Image.open(path).convert("RGB"), path.name, 10**6)
                      for path in files["images"]])
    expected = torch_predictor.probabilities(batch)
    shipped = load_predictor(artifact=str(files["artifact"]))
    assert shipped.labels == CLASSES and shipped.preprocessing == torch_predictor.preprocessing
    np.testing.assert_allclose(shipped.probabilities(batch), expected, atol=1e-5, rtol=1e-4)
    version = tmp_path / "3"
    version.mkdir()
    (version / "model.safetensors").write_bytes(files["checkpoint"].read_bytes())
    np.testing.assert_allclose(load_version(version, device="cpu").probabilities(batch), expected, atol=1e-6)
    pytest.importorskip("openvino", reason="the openvino runtime is optional")
    openvino = load_predictor(checkpoint=str(files["checkpoint"]), runtime="openvino")
    assert openvino.runtime == "openvino"
    np.testing.assert_allclose(openvino.probabilities(batch), expected, atol=1e-4, rtol=1e-3)


def test_shipped_folder_problems_are_named(files, tmp_path):
    with pytest.raises(ModelLoadError, match="manifest.json is missing"):
        load_shipped(tmp_path)
    with pytest.raises(ConfigError, match="was shipped for onnxruntime, not torchscript"):
        load_predictor(artifact=str(files["artifact"]), runtime="torchscript")
    with pytest.raises(ConfigError, match="either --artifact or --model/--checkpoint"):
        load_predictor(model="efficientnet_b0", artifact=str(files["artifact"]))
    with pytest.raises(ConfigError, match="runs on the CPU here"):
        load_predictor(checkpoint=str(files["checkpoint"]), runtime="onnxruntime", device="cuda")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("manifest.json", "labels.json", "preprocessing.json"):
        (broken / name).write_bytes((files["artifact"] / name).read_bytes())
    (broken / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load the model"):
        load_shipped(broken)


def test_batcher_batches_bounds_and_drains():
    calls: list[list[int]] = []
    release = threading.Event()

    def double(items: list[int]) -> list[int]:
        release.wait(TIMEOUT)
        calls.append(items)
        return [2 * item for item in items]

    async def scenario() -> None:
        batcher = Batcher(double, max_batch=3, max_wait_s=0.2, max_queue=5)
        batcher.start()
        first = asyncio.create_task(batcher.submit([1]))  # runs alone, blocked in the model until released
        await asyncio.sleep(0.3)
        waiting = [asyncio.create_task(batcher.submit([i, i + 10])) for i in (2, 3)]
        await asyncio.sleep(0.05)
        assert batcher.depth == 4
        with pytest.raises(QueueFullError, match="holds 4 of 5 images"):
            await batcher.submit([7, 8])
        release.set()
        assert await first == [2]
        assert [await task for task in waiting] == [[4, 24], [6, 26]]
        late = asyncio.create_task(batcher.submit([9]))
        await asyncio.sleep(0)
        await batcher.close()  # finishes what was submitted
        assert await late == [18]

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert calls == [[1], [2, 12, 3], [13], [9]]


def test_batcher_reports_a_failing_model_to_every_request():
    def broken(items: list[int]) -> list[int]:
        raise RuntimeError("out of memory")

    async def scenario() -> list:
        batcher = Batcher(broken, max_batch=4, max_wait_s=0.05, max_queue=8)
        batcher.start()
        results = await asyncio.gather(batcher.submit([1]), batcher.submit([2]), return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert [str(r) for r in results] == ["out of memory"] * 2
