"""Load test of ``effnet serve`` on loopback: dynamic batching against one image per model call.

    taskset -c 0,1 python benchmarks/serve_load.py [--model efficientnet_b0] [--checkpoint CKPT]
        [--clients 1,8,32] [--requests 320] [--time-limit 120] [--threads N] [--max-batch 32]
        [--max-wait-ms 5] [--decode-threads 1] [--pause 1]

Starts two real servers on free 127.0.0.1 ports: batching on (``--max-batch 32`` unless told)
and off (``--max-batch 1``), same model (B0 fp32, random weights unless --checkpoint: speed does not
depend on them), same ``--threads``. For each number of concurrent clients it sends a fixed
number of requests (one real photo each, a 451x300 JPEG the server decodes and resizes), the
two servers taking turns, and stops by itself at --time-limit. Printed per run: throughput,
p50/p99 latency, the mean batch size (from the server's ``effnet_batch_size`` metric), the
server's CPU time per request (from ``/proc``: on a machine shared with other work, wall-clock
throughput follows the neighbours' load, CPU time per request much less), errors and requests
lost; then the batched/unbatched ratios per client count, beside the CPU's features. The
clients run in this process (asyncio + httpx) and share the CPU with the server; ``taskset``
pins the whole test (servers and clients) to the cores given, e.g. two.
Aim: at 32 clients, batching >= 1.5x the unbatched throughput with no request failed or lost.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from effnet import create_model  # noqa: E402
from effnet.table import format_table  # noqa: E402
from effnet.weights.io import save_model  # noqa: E402
from helpers.serve import ServerProcess, metric  # noqa: E402

AIM = 1.5
MODES = ("unbatched", "batched")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")


@dataclass
class Run:
    mode: str
    clients: int
    sent: int
    ok: int
    errors: int
    seconds: float
    latencies: list[float]
    mean_batch: float
    server_cpu_s: float

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.server_cpu_s / max(1, self.ok)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def cpu_description() -> str:
    """The CPU's model name, cores and vector extensions (Linux), for reading CPU figures."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        flags = next(line for line in info if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"
    present = [flag for flag in CPU_FLAGS if flag in flags]
    cores = len(os.sched_getaffinity(0))
    return f"{name}, {cores} of {os.cpu_count()} cores usable, {', '.join(present) or 'no AVX2'}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def load(url: str, image: bytes, clients: int, requests: int, time_limit: float) -> tuple[int, int, int, float,
                                                                                                 list[float]]:
    """``requests`` POSTs from ``clients`` concurrent clients; (sent, ok, errors, seconds, latencies)."""
    issued = ok = errors = 0
    latencies: list[float] = []
    deadline = time.monotonic() + time_limit

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal issued, ok, errors
        while issued < requests and time.monotonic() < deadline:
            issued += 1
            start = time.perf_counter()
            try:
                answer = await session.post(url, files={"file": ("chelsea.jpg", image, "image/jpeg")})
                good = answer.status_code == 200 and len(answer.json()["predictions"]) == 1
            except httpx.HTTPError:
                good = False
            latencies.append(time.perf_counter() - start)
            ok, errors = ok + good, errors + (not good)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=time_limit) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return issued, ok, errors, time.perf_counter() - start, latencies


def batch_totals(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return metric(text, "effnet_batch_size_sum"), metric(text, "effnet_batch_size_count")


def start_server(max_batch: int, args: argparse.Namespace, checkpoint: Path, log: Path) -> ServerProcess:
    return ServerProcess(["--checkpoint", str(checkpoint), "--max-batch", str(max_batch), "--max-wait-ms",
                          str(args.max_wait_ms), "--max-queue", "1024", "--decode-threads", str(args.decode_threads),
                          "--device", "cpu"], log, threads=args.threads)


def measure(mode: str, server: ServerProcess, clients: int, args: argparse.Namespace, image: bytes) -> Run:
    images_before, batches_before = batch_totals(server.url)
    cpu_before = cpu_seconds(server.process.pid)
    sent, ok, errors, seconds, latencies = asyncio.run(
        load(server.url + "/v1/predict", image, clients, args.requests, args.time_limit))
    cpu = cpu_seconds(server.process.pid) - cpu_before
    images_after, batches_after = batch_totals(server.url)
    mean_batch = (images_after - images_before) / max(1.0, batches_after - batches_before)
    run = Run(mode, clients, sent, ok, errors, seconds, latencies, mean_batch, cpu)
    print(f"  {mode:>9} {clients:>2} clients: {run.throughput:6.1f} req/s, {run.cpu_ms_per_request:5.0f} server CPU "
          "ms/request", flush=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--checkpoint", help="serve this checkpoint instead of a random-weight --model")
    parser.add_argument("--clients", default="1,8,32", type=lambda text: [int(c) for c in text.split(",")])
    parser.add_argument("--requests", type=int, default=320, help="requests per run (default 320)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per run at most (default 120)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="server compute threads (default: the cores this process may use)")
    parser.add_argument("--pause", type=float, default=1.0, help="idle seconds before each run (default 1)")
    parser.add_argument("--max-batch", type=int, default=32, help="the batched server's --max-batch (default 32)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--decode-threads", type=int, default=1, help="the servers' --decode-threads (default 1)")
    args = parser.parse_args()

    image = photo()
    with tempfile.TemporaryDirectory(prefix="effnet-serve-load-") as folder:
        checkpoint = Path(args.checkpoint) if args.checkpoint else save_model(
            create_model(args.model), Path(folder) / f"{args.model}.safetensors")
        print(f"{args.model} fp32 on {cpu_description()}; server threads {args.threads}, torch {torch.__version__}; "
              f"{args.decode_threads} decode thread(s); {args.requests} requests per run (one "
              f"{len(image) // 1024} kB JPEG each)", flush=True)
        sizes = {"unbatched": 1, "batched": args.max_batch}
        servers = {mode: start_server(sizes[mode], args, checkpoint, Path(folder) / f"{mode}.log") for mode in MODES}
        runs = []
        try:
            for server in servers.values():
                server.wait_ready()
                asyncio.run(load(server.url + "/v1/predict", image, 2, 8, args.time_limit))  # warm-up
            for clients in args.clients:  # the two servers take turns, so a change of load hits both
                for mode, server in servers.items():
                    time.sleep(args.pause)
                    runs.append(measure(mode, server, clients, args, image))
        finally:
            for server in servers.values():
                server.stop()

    rows = [[r.mode, r.clients, r.sent, r.ok, r.errors, args.requests - r.sent, f"{r.throughput:.1f}",
             f"{r.percentile(0.5):.0f}", f"{r.percentile(0.99):.0f}", f"{r.mean_batch:.1f}",
             f"{r.cpu_ms_per_request:.0f}"] for r in runs]
    print(format_table(["mode", "clients", "sent", "ok", "errors", "lost", "req/s", "p50 ms", "p99 ms", "mean batch",
                        "CPU ms/req"], rows))
    by_key = {(r.mode, r.clients): r for r in runs}
    for clients in args.clients:
        batched, unbatched = by_key["batched", clients], by_key["unbatched", clients]
        speed = batched.throughput / unbatched.throughput
        cpu = batched.cpu_ms_per_request / unbatched.cpu_ms_per_request
        print(f"batched / unbatched at {clients:>2} clients: throughput {speed:.2f}x, CPU per request {cpu:.2f}x")
    clean = all(r.errors == 0 and r.sent == args.requests for r in runs)
    top = max(args.clients)
    ratio = by_key["batched", top].throughput / by_key["unbatched", top].throughput
    print(f"aim at {top} clients: >= {AIM}x with no request failed or lost: "
          f"{'met' if ratio >= AIM and clean else 'NOT met'} ({ratio:.2f}x, {'clean' if clean else 'errors/losses'})")


if __name__ == "__main__":
    main()
