"""Load tests of the server on loopback, one command, one table per suite:

    taskset -c 0,1 python benchmarks/serve_load.py [--suites batching,v2,repository,torch-free]
        [--artifact LITE0_INT8_FOLDER] [--model efficientnet_b0] [--checkpoint CKPT] [--clients 1,8,32]
        [--requests 320] [--time-limit 120] [--threads N] [--max-batch 32] [--max-wait-ms 5]
        [--decode-threads 1] [--pause 1] [--rounds 3] [--torch-free-python PYTHON]

Every request carries one real photo (a 34 kB JPEG the server decodes and resizes). Suites:

- ``batching``: ``effnet serve`` on /v1 with batching on (``--max-batch``) and off (1), same
  model (B0 fp32, random weights unless ``--checkpoint``: speed does not depend on them), the two
  servers taking turns at each client count. Aim: at 32 clients, batching >= 1.5x the unbatched
  throughput with no request failed or lost.
- ``v2``: the same batched server on the Open Inference Protocol route with binary data (the body
  tritonclient sends: a JSON header, then the length-prefixed JPEG), beside /v1.
- ``repository``: ``effnet serve --repository`` with two models (the B0 checkpoint as version 1 of
  two names); each client alternates between them.
- ``torch-free``: the issue's aim, with a shipped Lite0 INT8 folder (``--artifact``; made with
  ``effnet ship`` when not given, which takes minutes): ``effnet-serve`` (without PyTorch: by
  default this interpreter with torch and effnet blocked from import, or ``--torch-free-python``
  of an environment without them) against ``effnet serve --artifact`` (the same runtime, in a
  process that has PyTorch), each timed from start to ready and warmed up with 3 requests, then
  the two taking turns for ``--rounds`` loads of ``--requests`` requests from 32 clients on /v2.
  Aim: resident memory after the first load <= 300 MB, start to ready <= 3 s, throughput (over
  all rounds) >= the torch server's.

Printed per run: throughput, p50/p99 latency, the mean batch size (from the server's metrics),
the server's CPU time per request (from ``/proc``: on a shared machine, wall-clock throughput
follows the neighbours' load, CPU time per request much less), errors, requests lost, and the
load average when the run started; first the CPU's features. The clients run in this process
(asyncio + httpx) and share the CPU with the server; ``taskset`` pins everything to the cores given.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "packages" / "effnet-runtime" / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from effnet import create_model  # noqa: E402
from effnet.deploy.environment import describe_cpu  # noqa: E402
from effnet.table import format_table  # noqa: E402
from effnet.weights.io import save_model  # noqa: E402
from helpers.serve import ServerProcess, metric_total  # noqa: E402

SUITES = ("batching", "v2", "repository", "torch-free")
BATCHING_AIM = 1.5
RSS_AIM_MB, READY_AIM_S = 300, 3.0
AIM_CLIENTS = 32
WARM_UP_REQUESTS = 3
Request = Callable[[httpx.AsyncClient, int], "asyncio.Future[bool]"]


@dataclass
class Run:
    suite: str
    server: str
    route: str
    clients: int
    sent: int
    ok: int
    errors: int
    seconds: float
    latencies: list[float]
    mean_batch: float
    server_cpu_s: float
    load_average: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.server_cpu_s / max(1, self.ok)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak (VmHWM), in MB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def v1_request(server: ServerProcess, image: bytes, models: list[str] | None = None) -> Request:
    """POST /v1/predict with the photo as multipart file (each call alternating ``models``)."""

    async def send(session: httpx.AsyncClient, number: int) -> bool:
        params = {"model": models[number % len(models)]} if models else {}
        answer = await session.post(server.url + "/v1/predict", params=params,
                                    files={"file": ("chelsea.jpg", image, "image/jpeg")})
        return answer.status_code == 200 and len(answer.json()["predictions"]) == 1

    return send


def v2_request(server: ServerProcess, image: bytes, models: list[str]) -> Request:
    """POST /v2/models/NAME/infer with binary data (as tritonclient sends BYTES), alternating ``models``."""
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(image) + 4}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    body = header + struct.pack("<I", len(image)) + image
    headers = {"Inference-Header-Content-Length": str(len(header))}

    async def send(session: httpx.AsyncClient, number: int) -> bool:
        model = models[number % len(models)]
        answer = await session.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers)
        return answer.status_code == 200 and answer.headers.get("inference-header-content-length") is not None

    return send


async def load(request: Request, clients: int, requests: int, time_limit: float
               ) -> tuple[int, int, int, float, list[float]]:
    """``requests`` requests from ``clients`` concurrent clients; (sent, ok, errors, seconds, latencies)."""
    issued = ok = errors = 0
    latencies: list[float] = []
    deadline = time.monotonic() + time_limit

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal issued, ok, errors
        while issued < requests and time.monotonic() < deadline:
            number = issued
            issued += 1
            start = time.perf_counter()
            try:
                good = await request(session, number)
            except (httpx.HTTPError, ValueError):
                good = False
            latencies.append(time.perf_counter() - start)
            ok, errors = ok + good, errors + (not good)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=time_limit) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return issued, ok, errors, time.perf_counter() - start, latencies


def batch_totals(server: ServerProcess) -> tuple[float, float]:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return metric_total(text, "effnet_batch_size_sum"), metric_total(text, "effnet_batch_size_count")


def measure(suite: str, name: str, route: str, server: ServerProcess, request: Request, clients: int,
            args: argparse.Namespace) -> Run:
    time.sleep(args.pause)
    images_before, batches_before = batch_totals(server)
    cpu_before = cpu_seconds(server.process.pid)
    load_average = os.getloadavg()[0]
    sent, ok, errors, seconds, latencies = asyncio.run(load(request, clients, args.requests, args.time_limit))
    cpu = cpu_seconds(server.process.pid) - cpu_before
    images_after, batches_after = batch_totals(server)
    mean_batch = (images_after - images_before) / max(1.0, batches_after - batches_before)
    run = Run(suite, name, route, clients, sent, ok, errors, seconds, latencies, mean_batch, cpu, load_average)
    print(f"  {suite} {name:>12} {route} {clients:>2} clients: {run.throughput:6.1f} req/s, "
          f"{run.cpu_ms_per_request:5.0f} server CPU ms/request (load average {load_average:.1f})", flush=True)
    return run


def warm_up(request: Request, args: argparse.Namespace) -> None:
    asyncio.run(load(request, 1, WARM_UP_REQUESTS, args.time_limit))


def start(arguments: list[str], log: Path, args: argparse.Namespace, **options) -> ServerProcess:
    return ServerProcess([*arguments, "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "1024",
                          "--decode-threads", str(args.decode_threads)], log, threads=args.threads,
                         **options).wait_ready()


# ------------------------------------------------------------------ suites
def batching_suite(args: argparse.Namespace, checkpoint: Path, folder: Path, image: bytes) -> list[Run]:
    sizes = {"unbatched": 1, "batched": args.max_batch}
    servers = {name: start(["--checkpoint", str(checkpoint), "--max-batch", str(size), "--device", "cpu"],
                           folder / f"{name}.log", args) for name, size in sizes.items()}
    runs = []
    try:
        for server in servers.values():
            warm_up(v1_request(server, image), args)
        for clients in args.clients:  # the two servers take turns, so a change of load hits both
            for name, server in servers.items():
                runs.append(measure("batching", name, "/v1", server, v1_request(server, image), clients, args))
    finally:
        for server in servers.values():
            server.stop()
    return runs


def v2_suite(args: argparse.Namespace, checkpoint: Path, folder: Path, image: bytes) -> list[Run]:
    server = start(["--checkpoint", str(checkpoint), "--max-batch", str(args.max_batch), "--device", "cpu"],
                   folder / "v2.log", args)
    name = args.model
    routes = {"/v1": v1_request(server, image), "/v2 binary": v2_request(server, image, [name])}
    try:
        warm_up(routes["/v2 binary"], args)
        return [measure("v2", "batched", route, server, request, AIM_CLIENTS, args)
                for route, request in routes.items()]
    finally:
        server.stop()


def repository_suite(args: argparse.Namespace, checkpoint: Path, folder: Path, image: bytes) -> list[Run]:
    models = ["first", "second"]
    for name in models:
        version = folder / "repository" / name / "1"
        version.mkdir(parents=True)
        (version / "model.safetensors").symlink_to(checkpoint.resolve())
    server = start(["--repository", str(folder / "repository"), "--max-batch", str(args.max_batch), "--device",
                    "cpu"], folder / "repository.log", args)
    routes = {"/v1": v1_request(server, image, models), "/v2 binary": v2_request(server, image, models)}
    try:
        warm_up(routes["/v2 binary"], args)
        return [measure("repository", "two models", route, server, request, AIM_CLIENTS, args)
                for route, request in routes.items()]
    finally:
        server.stop()


def ship_lite0_int8(folder: Path) -> Path:
    """A Lite0 INT8 folder for ONNX Runtime, as ``effnet ship`` writes it (calibrated on the demo
    digits; ship's evaluation folder must hold every class, so one digit per ImageNet class)."""
    import itertools
    import shutil

    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                                str(ROOT / "packages" / "effnet-runtime" / "src")])}
    effnet = [sys.executable, "-m", "effnet"]
    subprocess.run([*effnet, "data", "demo", str(folder / "digits")], check=True, env=environment)
    names = create_model("efficientnet_lite0", pretrained=True).class_names
    digits = sorted((folder / "digits" / "val").rglob("*.png"))
    for name, digit in zip(names, itertools.cycle(digits)):
        (folder / "eval" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(digit, folder / "eval" / name / digit.name)
    out = folder / "lite0-int8"
    subprocess.run([*effnet, "ship", "--checkpoint", "efficientnet_lite0", "--target", "onnxruntime-int8", "--calib",
                    str(folder / "digits" / "train"), "--eval", str(folder / "eval"), "--out", str(out),
                    "--max-drop", "100", "--no-speed"], check=True, env=environment)
    return out


def torch_free_suite(args: argparse.Namespace, folder: Path, image: bytes) -> list[Run]:
    """Both servers up, each timed from start to ready and warmed up, then taking turns for
    ``--rounds`` loads each (a change in the neighbours' load hits both)."""
    artifact = Path(args.artifact) if args.artifact else ship_lite0_int8(folder)
    name = json.loads((artifact / "manifest.json").read_text())["model_name"]
    options = {"torch-free": {"torch_free": True, "python": args.torch_free_python}, "with torch": {}}
    servers: dict[str, ServerProcess] = {}
    warm: dict[str, float] = {}
    runs = []
    try:
        for label, extra in options.items():
            servers[label] = start(["--artifact", str(artifact), "--max-batch", str(args.max_batch)],
                                   folder / f"{label}.log", args, **extra)
            warm_up(v2_request(servers[label], image, [name]), args)
            warm[label] = memory_mb(servers[label].process.pid)["VmRSS"]
        for _ in range(args.rounds):
            for label, server in servers.items():
                run = measure("torch-free", label, "/v2 binary", server, v2_request(server, image, [name]),
                              AIM_CLIENTS, args)
                after = memory_mb(server.process.pid)
                run.extra = {"ready_s": server.ready_s, "rss_warm_mb": warm[label], "rss_after_mb": after["VmRSS"],
                             "peak_mb": after["VmHWM"]}
                runs.append(run)
    finally:
        for server in servers.values():
            server.stop()
    return runs


# ------------------------------------------------------------------ report
def report(runs: list[Run], args: argparse.Namespace) -> None:
    for suite in dict.fromkeys(r.suite for r in runs):
        rows = [[r.server, r.route, r.clients, r.sent, r.ok, r.errors, args.requests - r.sent, f"{r.throughput:.1f}",
                 f"{r.percentile(0.5):.0f}", f"{r.percentile(0.99):.0f}", f"{r.mean_batch:.1f}",
                 f"{r.cpu_ms_per_request:.0f}", f"{r.load_average:.1f}"] for r in runs if r.suite == suite]
        headers = ["server", "route", "clients", "sent", "ok", "errors", "lost", "req/s", "p50 ms", "p99 ms",
                   "mean batch", "CPU ms/req", "load avg"]
        if suite == "torch-free":
            for row, run in zip(rows, [r for r in runs if r.suite == suite], strict=True):
                row += [f"{run.extra['ready_s']:.2f}", f"{run.extra['rss_warm_mb']:.0f}",
                        f"{run.extra['rss_after_mb']:.0f}", f"{run.extra['peak_mb']:.0f}"]
            headers += ["ready s", "RSS warm MB", "RSS after MB", "peak MB"]
        print(f"\n{suite}:")
        print(format_table(headers, rows))
    verdicts(runs)


def verdicts(runs: list[Run]) -> None:
    clean = all(r.errors == 0 and r.sent == r.ok for r in runs)
    by_key = {(r.suite, r.server, r.route, r.clients): r for r in runs}
    top = max((r.clients for r in runs if r.suite == "batching"), default=None)
    if top is not None:
        ratio = by_key["batching", "batched", "/v1", top].throughput / by_key["batching", "unbatched", "/v1",
                                                                               top].throughput
        print(f"batching aim at {top} clients: >= {BATCHING_AIM}x: {'met' if ratio >= BATCHING_AIM else 'NOT met'} "
              f"({ratio:.2f}x)")
    free = [r for r in runs if r.suite == "torch-free" and r.server == "torch-free"]
    with_torch = [r for r in runs if r.suite == "torch-free" and r.server == "with torch"]
    if free and with_torch:
        speeds = [sum(r.ok for r in group) / sum(r.seconds for r in group) for group in (free, with_torch)]
        checks = {f"RSS after the first load <= {RSS_AIM_MB} MB ({free[0].extra['rss_after_mb']:.0f})":
                  free[0].extra["rss_after_mb"] <= RSS_AIM_MB,
                  f"start to ready <= {READY_AIM_S:g} s ({free[0].extra['ready_s']:.2f})":
                  free[0].extra["ready_s"] <= READY_AIM_S,
                  f"throughput over all rounds >= the torch server's ({speeds[0]:.1f} against {speeds[1]:.1f} req/s)":
                  speeds[0] >= speeds[1]}
        for what, met in checks.items():
            print(f"torch-free aim: {what}: {'met' if met else 'NOT met'}")
    print(f"every request answered 200, none lost: {'yes' if clean else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default=",".join(SUITES), type=lambda text: text.split(","))
    parser.add_argument("--artifact", help="a shipped Lite0 INT8 folder for the torch-free suite (default: ship one)")
    parser.add_argument("--torch-free-python", help="the python of an environment without PyTorch that has "
                                                    "effnet-runtime[serve] (default: this one, torch blocked)")
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--checkpoint", help="serve this checkpoint instead of a random-weight --model")
    parser.add_argument("--clients", default="1,8,32", type=lambda text: [int(c) for c in text.split(",")])
    parser.add_argument("--requests", type=int, default=320, help="requests per run (default 320)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per run at most (default 120)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="server compute threads (default: the cores this process may use)")
    parser.add_argument("--rounds", type=int, default=3, help="torch-free suite: loads per server, taking turns "
                                                                "(default 3)")
    parser.add_argument("--pause", type=float, default=1.0, help="idle seconds before each run (default 1)")
    parser.add_argument("--max-batch", type=int, default=32, help="the batched servers' --max-batch (default 32)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--decode-threads", type=int, default=1, help="the servers' --decode-threads (default 1)")
    args = parser.parse_args()
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suites {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")

    image = photo()
    print(f"{time.strftime('%Y-%m-%d %H:%M')} on {describe_cpu()}; load average {os.getloadavg()[0]:.1f}; server "
          f"threads {args.threads}, torch {torch.__version__}; {args.decode_threads} decode thread(s); "
          f"{args.requests} requests per run (one {len(image) // 1024} kB JPEG each)", flush=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="effnet-serve-load-") as temporary:
        folder = Path(temporary)
        checkpoint = Path(args.checkpoint) if args.checkpoint else save_model(
            create_model(args.model), folder / f"{args.model}.safetensors")
        if "batching" in args.suites:
            runs += batching_suite(args, checkpoint, folder, image)
        if "v2" in args.suites:
            runs += v2_suite(args, checkpoint, folder, image)
        if "repository" in args.suites:
            runs += repository_suite(args, checkpoint, folder, image)
        if "torch-free" in args.suites:
            runs += torch_free_suite(args, folder, image)
    report(runs, args)


if __name__ == "__main__":
    main()
