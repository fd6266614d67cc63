"""``effnet serve``: a real server on a loopback port, spoken to over HTTP. Bad input is refused
with a 4xx naming the problem, concurrent requests share batches, SIGTERM answers the requests
in flight, and the answers equal ``effnet predict``'s. The batcher and the model loaders are
also tested on their own."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from effnet.cli import main
from effnet.deploy.export import export_model
from effnet.description import Preprocessing
from effnet.errors import ConfigError, InputFileError
from effnet.serve import Batcher, Predictor, QueueFullError, create_app, load_artifact, load_predictor
from effnet.weights.io import save_model
from helpers.deploy import tiny_model
from helpers.serve import CLEAN_EXIT, ServerProcess, free_port, metric

CLASSES = ["circle", "square", "stripes"]
CATS = {"tiger cat", "tabby", "Egyptian cat"}
KEY = "s3cret-key"
AUTH = {"X-API-Key": KEY}
MAX_PIXELS = 20_000
MAX_FILES = 4
TIMEOUT = 60


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


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
    artifact = folder / "shipped"
    artifact.mkdir()
    export_model(model, artifact / "model.onnx", "onnx")
    (artifact / "manifest.json").write_text(json.dumps({"runtime": "onnxruntime", "model_file": "model.onnx",
                                                        "model_name": "tiny_b0"}))
    (artifact / "labels.json").write_text(json.dumps(CLASSES))
    (artifact / "preprocessing.json").write_text(json.dumps(model.preprocessing.to_dict()))
    return {"folder": folder, "checkpoint": checkpoint, "images": images, "artifact": artifact}


@pytest.fixture(scope="module")
def server(files):
    process = ServerProcess(["--checkpoint", str(files["checkpoint"]), "--max-batch", "8", "--max-wait-ms", "300",
                             "--max-files", str(MAX_FILES), "--max-upload-mb", "0.05", "--max-pixels",
                             str(MAX_PIXELS)], files["folder"] / "server.log", env={"EFFNET_API_KEY": KEY})
    process.wait_ready()
    yield process
    assert process.stop() in CLEAN_EXIT, process.output()


def upload(path) -> tuple:
    return ("file", (path.name, path.read_bytes(), "image/png"))


def post(server, files=None, **options) -> httpx.Response:
    options.setdefault("headers", AUTH)
    return httpx.post(server.url + "/v1/predict", files=files, timeout=TIMEOUT, **options)


# ---------------------------------------------------------------------------- answers
def test_answers_equal_effnet_predict(files, capsys):
    """Real ImageNet weights on real photos (colour and greyscale, PNG and JPEG), so that
    probabilities differ between pictures and a mix-up or a preprocessing difference shows."""
    photos = []
    for name, suffix in (("chelsea", "jpg"), ("coffee", "png"), ("astronaut", "png"), ("camera", "png"),
                         ("rocket", "jpg")):
        photos.append(files["folder"] / f"{name}.{suffix}")
        Image.fromarray(getattr(skimage_data, name)()).save(photos[-1])
    assert main(["predict", *map(str, photos), "--model", "efficientnet_lite0", "--format", "json", "--top-k", "3",
                 "--device", "cpu", "--no-progress"]) == 0
    expected = json.loads(capsys.readouterr().out)
    server = ServerProcess(["--model", "efficientnet_lite0"], files["folder"] / "lite0.log").wait_ready()
    try:
        answer = post(server, [upload(path) for path in photos[:4]], params={"top_k": 3}, headers={})
        raw = post(server, content=photos[4].read_bytes(), headers={"Content-Type": "image/jpeg"}, params={"top_k": 3})
    finally:
        assert server.stop() in CLEAN_EXIT, server.output()
    assert answer.status_code == 200 and raw.status_code == 200, (answer.text, raw.text)
    body = answer.json()
    assert body["model"] == "efficientnet_lite0" and body["runtime"] == "torch" and body["time_ms"] > 0
    got = body["predictions"] + [{**raw.json()["predictions"][0], "file": photos[4].name}]
    assert [p["file"] for p in got] == [path.name for path in photos]
    for served, reference in zip(got, expected, strict=True):
        assert [c["class_name"] for c in served["top_k"]] == [c["class_name"] for c in reference["predictions"]]
        assert [c["class_index"] for c in served["top_k"]] == [c["class_index"] for c in reference["predictions"]]
        np.testing.assert_allclose([c["probability"] for c in served["top_k"]],
                                   [c["probability"] for c in reference["predictions"]], atol=1e-5)
    assert got[0]["top_k"][0]["class_name"] in CATS and got[1]["top_k"][0]["class_name"] == "espresso"


def test_model_health_and_page(server):
    model = httpx.get(server.url + "/v1/model", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT).json()
    assert model["classes"] == CLASSES and model["runtime"] == "torch" and model["num_classes"] == 3
    assert model["preprocessing"]["resolution"] == 32 and model["limits"]["max_batch"] == 8
    assert KEY not in json.dumps(model)
    assert httpx.get(server.url + "/healthz", timeout=TIMEOUT).json() == {"status": "ok", "model": "efficientnet_b0"}
    page = httpx.get(server.url + "/", timeout=TIMEOUT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "v1/predict" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


def test_top_k_defaults_to_five_capped_at_the_classes_and_is_checked(server, files):
    assert len(post(server, [upload(files["images"][0])]).json()["predictions"][0]["top_k"]) == 3
    one = post(server, [upload(files["images"][0])], data={"top_k": "1"})
    assert len(one.json()["predictions"][0]["top_k"]) == 1
    bad = post(server, [upload(files["images"][0])], params={"top_k": "zero"})
    assert bad.status_code == 400 and bad.json()["error"] == "bad_top_k" and "'zero'" in bad.json()["message"]


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


def test_too_big_too_many_wrong_type_and_keys_are_refused(server, files):
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
        (post(server, [upload(files["images"][0])], headers={}), 401, "missing_api_key", "needs an API key"),
        (post(server, [upload(files["images"][0])], headers={"X-API-Key": "guess"}), 403, "wrong_api_key",
         "not the one"),
        (httpx.get(server.url + "/v1/model", timeout=TIMEOUT), 401, "missing_api_key", "X-API-Key"),
    ]
    for answer, status, code, message in checks:
        assert answer.status_code == status, answer.text
        assert answer.json()["error"] == code and message in answer.json()["message"], answer.text
    assert checks[-3][0].headers["www-authenticate"] == "Bearer"
    assert post(server, [upload(files["images"][0])]).status_code == 200  # still serving
    metrics = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    assert metric(metrics, "effnet_requests_total", 'endpoint="/v1/predict",status="413"') >= 2
    assert metric(metrics, "effnet_requests_total", 'endpoint="/v1/predict",status="401"') >= 1
    assert "status=\"500\"" not in metrics


# ------------------------------------------------------------------------ batching
def test_concurrent_requests_share_batches(server, files):
    before = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda path: post(server, [upload(path)]), files["images"] * 2))
    assert [a.status_code for a in answers] == [200] * 10
    after = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    images = metric(after, "effnet_batch_size_sum") - metric(before, "effnet_batch_size_sum")
    batches = metric(after, "effnet_batch_size_count") - metric(before, "effnet_batch_size_count")
    assert images == 10 and batches < 10, (images, batches)  # some batch held several requests
    singles = metric(after, "effnet_batch_size_bucket", 'le="1.0"') - metric(before, "effnet_batch_size_bucket",
                                                                              'le="1.0"')
    assert singles < batches
    assert metric(after, "effnet_images_total") >= 10
    assert metric(after, "effnet_queue_depth") == 0


# ----------------------------------------------------- shipped folder, queue, SIGTERM
def test_shipped_folder_full_queue_and_sigterm_answer_requests_in_flight(files):
    server = ServerProcess(["--artifact", str(files["artifact"]), "--max-batch", "64", "--max-wait-ms", "4000",
                            "--max-queue", "6", "--max-files", "2"], files["folder"] / "sigterm.log")
    server.wait_ready()
    try:
        model = httpx.get(server.url + "/v1/model", timeout=TIMEOUT).json()
        assert model["name"] == "tiny_b0" and model["runtime"] == "onnxruntime" and model["classes"] == CLASSES
        pool = ThreadPoolExecutor(3)
        in_flight = [pool.submit(post, server, [upload(files["images"][i]), upload(files["images"][i + 1])])
                     for i in range(3)]
        deadline = time.monotonic() + TIMEOUT
        while metric(httpx.get(server.url + "/metrics", timeout=TIMEOUT).text, "effnet_queue_depth") < 6:
            assert time.monotonic() < deadline, "the requests never reached the queue"
            assert not any(f.done() for f in in_flight), [f.result().text for f in in_flight if f.done()]
            time.sleep(0.05)
        full = post(server, [upload(files["images"][0])])
        assert full.status_code == 503 and full.json()["error"] == "queue_full" and full.headers["retry-after"] == "1"
        server.terminate()
        answers = [f.result(timeout=TIMEOUT) for f in in_flight]
        pool.shutdown()
        assert server.process.wait(TIMEOUT) in CLEAN_EXIT, server.output()
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
    assert all(a.json()["runtime"] == "onnxruntime" for a in answers)
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=5)


@pytest.mark.slow
def test_two_workers_share_one_port(files):
    server = ServerProcess(["--checkpoint", str(files["checkpoint"]), "--workers", "2"], files["folder"] / "w.log")
    server.wait_ready(in_a_row=20)  # both workers warm (a connection reaching a cold one gets 503)
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda path: post(server, [upload(path)], headers={}), files["images"]))
    finally:
        assert server.stop() in CLEAN_EXIT, server.output()
    assert [a.status_code for a in answers] == [200] * 5


def test_cli_refuses_bad_settings_with_one_line(capsys, files):
    assert main(["serve"]) == 2
    assert "no model to serve: give --model NAME, --checkpoint" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(files["checkpoint"]), "--max-batch", "0"]) == 2
    assert "max_batch must be at least 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--artifact", str(files["folder"] / "nowhere")]) == 2
    assert "shipped folder" in capsys.readouterr().err


# ---------------------------------------------------------------- loaders, in process
def test_runtimes_agree_with_torch(files):
    torch_predictor = load_predictor(checkpoint=files["checkpoint"], device="cpu")
    batch = torch.stack([torch_predictor.prepare(Image.open(path).convert("RGB")) for path in files["images"]])
    expected = torch_predictor.probabilities(batch)
    shipped = load_artifact(files["artifact"])
    assert shipped.class_names == CLASSES and shipped.preprocessing == torch_predictor.preprocessing
    torch.testing.assert_close(shipped.probabilities(batch), expected, atol=1e-5, rtol=1e-4)
    pytest.importorskip("openvino", reason="the openvino runtime is optional")
    openvino = load_predictor(checkpoint=files["checkpoint"], runtime="openvino")
    assert openvino.runtime == "openvino"
    torch.testing.assert_close(openvino.probabilities(batch), expected, atol=1e-4, rtol=1e-3)


def test_shipped_folder_problems_are_named(files, tmp_path):
    with pytest.raises(InputFileError, match="manifest.json is missing"):
        load_artifact(tmp_path)
    with pytest.raises(ConfigError, match="was shipped for onnxruntime, not torchscript"):
        load_artifact(files["artifact"], "torchscript")
    with pytest.raises(ConfigError, match="either --artifact or --model/--checkpoint"):
        load_predictor(model="efficientnet_b0", artifact=files["artifact"])
    with pytest.raises(ConfigError, match="runs on the CPU here"):
        load_predictor(checkpoint=files["checkpoint"], runtime="onnxruntime", device="cuda")


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


class GatedPredictor(Predictor):
    """A stand-in model whose every forward pass waits for ``gate``."""

    def __init__(self) -> None:
        super().__init__("gated", "fake", ["yes", "no"], Preprocessing(resolution=8))
        self.gate = threading.Event()

    @property
    def num_classes(self) -> int:
        return 2

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.gate.wait(TIMEOUT)
        return torch.tensor([[0.75, 0.25]]).expand(len(batch), 2)


def test_not_ready_until_the_warm_up_ran():
    import uvicorn

    predictor = GatedPredictor()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        health = httpx.get(url + "/healthz", timeout=TIMEOUT)
        assert health.status_code == 503 and health.json()["status"] == "warming_up"
        early = httpx.post(url + "/v1/predict", content=png_bytes(np.zeros((8, 8, 3), np.uint8)),
                           headers={"Content-Type": "image/png"}, timeout=TIMEOUT)
        assert early.status_code == 503 and early.json()["error"] == "not_ready"
        assert early.headers["retry-after"] == "1"
        predictor.gate.set()
        while httpx.get(url + "/healthz", timeout=TIMEOUT).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answer = httpx.post(url + "/v1/predict", content=png_bytes(np.zeros((8, 8, 3), np.uint8)),
                            headers={"Content-Type": "image/png"}, timeout=TIMEOUT).json()
        assert answer["predictions"][0]["top_k"][0] == {"rank": 1, "class_index": 0, "class_name": "yes",
                                                        "probability": 0.75}
    finally:
        predictor.gate.set()
        server.should_exit = True
        thread.join(TIMEOUT)
    assert not thread.is_alive()
