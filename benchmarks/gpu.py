"""effnet, timm and torchvision side by side on one CUDA GPU: the anchors' jobs and issue 20's aims.

    PYTHONPATH=src python3 benchmarks/gpu.py [--out gpu_bench.json] [--budget 470]
    python3 benchmarks/gpu.py --smoke          # tiny sizes on the CPU, a few minutes

Jobs, in this order:

- eager: inference of B0 @224 batch 256, ResNet-50 @224 batch 256, B4 @380 batch 64 and B7 @600
  batch 32; training steps (SGD) of B0 and ResNet-50 @224 batch 256;
- input: B0 training @224 batch 256 from a folder of 20,000 JPEGs (350-500 px, quality 90, cut
  from real photos, written on the machine) fed four ways: the model alone on tensors already on
  the GPU, effnet's CPU decoding (every core a loader worker), effnet's GPU decoding
  (``data.decode=gpu``) and timm's loader (benchmarks/gpu_input.py);
- in their own processes: effnet's CUDA inference path (``ours_fast``: BatchNorm folded, fused
  Triton kernels, CUDA graphs; for B0 also with torch.compile around the kernels,
  ``ours_fast_compiled``; each first checks its logits against the eager network's, see
  :func:`check_prepared`) for B0, B4 and B7 beside timm's compiled model; B0 training with
  cheap activations recomputed in backward, compiled (``ours_lowmem``), beside timm's compiled
  training (with ``--compile-sources ...,ours,torchvision`` also the plain compiled B0 rows of
  ours and torchvision, left out by default to keep the run under 8 minutes).

Everything runs in bf16 autocast, channels_last, with cudnn.benchmark, on random data except the
input job. Each row is timed as the median of 3 loops, each synchronized at both ends; throughput
is images per second. Peak memory is torch.cuda.max_memory_allocated over the timed loops
(weights, gradients, optimizer state and activations). The ratios of issue 20's aims (AIMS) are
printed and written with the rows, each from rows of this one run.

Time is bounded: the eager rows and the input job run first, in this process; then every
compiled row starts at
once in its own process, compiles and warms up, and is timed alone when all are ready, so a
compile never runs beside a timed loop. A compile still unfinished at the deadline is killed
and its row marked skipped; any row that would start too close to the end of --budget is
skipped with a note. Results go to --out (JSON) after every row, so a stopped run keeps what it
measured. timm is optional: without it, its rows are skipped.

effnet need not be installed: the repository's ``src`` is put on the import path.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

START = time.monotonic()
SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

import effnet  # noqa: E402
from effnet.accelerate import prepare_for_inference  # noqa: E402
from effnet.bench.peers import build_timm, build_torchvision, timm_available  # noqa: E402
from effnet.errors import first_line  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_input  # noqa: E402

SOURCES = ("ours", "torchvision", "timm")
FEEDS = ("model_alone", "cpu_decode", "gpu_decode", "timm_loader")
"""The input job's ways of feeding B0 training (benchmarks/gpu_input.py)."""
AIMS = (  # (job, ours, other job, peer, measure, aim): issue 20's targets, each from one run
    ("infer_b0_compiled", "ours_fast", "infer_b0_compiled", "timm", "img_s", 1.3),
    ("infer_b0_compiled", "ours_fast_compiled", "infer_b0_compiled", "timm", "img_s", 1.3),
    ("infer_b4_compiled", "ours_fast", "infer_b4_compiled", "timm", "img_s", 1.2),
    ("infer_b7_compiled", "ours_fast", "infer_b7_compiled", "timm", "img_s", 1.2),
    ("train_b0_compiled", "ours_lowmem", "train_b0_compiled", "timm", "img_s", 1.1),
    ("train_b0_compiled", "ours_lowmem", "train_b0_compiled", "timm", "peak_gib", 0.8),
    ("input_b0", "gpu_decode", "input_b0", "model_alone", "img_s", 0.9),
    ("input_b0", "gpu_decode", "input_b0", "timm_loader", "img_s", 2.0),
)
"""Above the aim is met for images/s; at or below it for peak memory."""
ANCHOR_SIZES = {"b0": (224, 256), "resnet50": (224, 256), "b4": (380, 64), "b7": (600, 32)}
TINY_SIZES = {network: (32, 2) for network in ANCHOR_SIZES}
ANCHORS = {  # img/s and peak GiB on one H200 (PyTorch 2.11), from the project's reference table
    ("infer_b0", "torchvision"): 20841, ("infer_b0", "timm"): 20865, ("infer_b0_compiled", "timm"): 29700,
    ("infer_resnet50", "torchvision"): 15395, ("infer_b4", "torchvision"): 2813,
    ("infer_b7", "torchvision"): 513, ("train_b0", "torchvision"): 5062, ("train_b0", "timm"): 5128,
    ("train_b0_compiled", "timm"): 6675, ("train_resnet50", "torchvision"): 4685,
}
ANCHOR_PEAK_GIB = {("train_b0", "torchvision"): 10.87, ("train_b0", "timm"): 10.85,
                   ("train_b0_compiled", "timm"): 6.87, ("train_resnet50", "torchvision"): 11.01}
EAGER_ROW_RESERVE_S = 20.0
"""An eager row starts only with this much of the budget left."""
COMPILED_TIMING_S = 12.0
"""Time set aside to time one compiled row once it is ready."""
MIN_COMPILE_WINDOW_S = 45.0
FAST_PATH_TOLERANCE = 0.1
"""Largest logit difference, relative to the largest logit, between the fast path and the eager
network in bf16 before a fast row is timed: bf16 rounding stays far below; a broken kernel does not."""
INPUT_RESERVE_S = 90.0
"""The input job starts only with this much of the budget left (a tenth of it at tiny sizes)."""


def log(message: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {message}", flush=True)


@dataclass(frozen=True)
class Row:
    """One network from one source on one job."""

    task: str  # infer | train
    network: str  # b0 | b4 | b7 | resnet50
    compiled: bool
    source: str

    @property
    def job(self) -> str:
        return f"{self.task}_{self.network}" + ("_compiled" if self.compiled else "")

    @property
    def key(self) -> str:
        return f"{self.job}.{self.source}"


def plan() -> list[Row]:
    """Every row, most important first: the eager jobs, the input job's feeds, then the rows that
    compile (or capture) in their own process: effnet's CUDA inference path (``ours_fast``) and
    its low-memory compiled training (``ours_lowmem``) beside timm's compiled model, then the
    plain compiled rows (torchvision's last: the anchors do not have them)."""
    rows = []
    for task, network in (("infer", "b0"), ("infer", "resnet50"), ("infer", "b4"), ("infer", "b7"),
                          ("train", "b0"), ("train", "resnet50")):
        sources = ("torchvision",) if network == "resnet50" else SOURCES
        rows += [Row(task, network, False, source) for source in sources]
    rows += [Row("input", "b0", False, feed) for feed in FEEDS]
    rows += [Row("infer", network, True, source) for network in ("b0", "b4", "b7") for source in ("ours_fast", "timm")]
    rows.append(Row("infer", "b0", True, "ours_fast_compiled"))
    rows += [Row("train", "b0", True, source) for source in ("ours_lowmem", "timm")]
    rows += [Row(task, "b0", True, source) for source in ("ours", "torchvision") for task in ("infer", "train")]
    return rows


@dataclass(frozen=True)
class Options:
    device: str = "cuda"
    sizes: str = "anchors"
    compile_backend: str = "inductor"
    budget_s: float = 470.0
    loop_seconds: float = 0.6
    warmup_seconds: float = 0.5
    min_warmup_calls: int = 3
    cpu_threads: int = 0  # 0: torch's default
    compile_sources: str = "ours_fast,ours_fast_compiled,ours_lowmem,timm"
    only: str = ""
    input_images: int = 20000
    input_steps: int = 40
    input_warmup: int = 8
    input_workers: int = 0  # 0: every core

    def apply(self) -> None:
        """Process-wide settings every process of the run shares."""
        if torch.device(self.device).type == "cuda":
            torch.backends.cudnn.benchmark = True
        elif self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)

    def size(self, network: str) -> tuple[int, int]:
        return (ANCHOR_SIZES if self.sizes == "anchors" else TINY_SIZES)[network]


@dataclass
class Result:
    row: Row
    resolution: int
    batch: int
    status: str = "ok"
    img_s: float | None = None
    ms_per_step: float | None = None
    loop_seconds: list[float] = field(default_factory=list)
    steps_per_loop: int = 0
    peak_gib: float | None = None
    first_call_s: float | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(data.pop("row"))
        data.update(job=self.row.job, key=self.row.key, anchor_img_s=ANCHORS.get((self.row.job, self.row.source)),
                    anchor_peak_gib=ANCHOR_PEAK_GIB.get((self.row.job, self.row.source)))
        return data


# --- one row ---------------------------------------------------------------------------------

def build_network(row: Row, device: torch.device) -> torch.nn.Module:
    """The row's network with random weights, built directly on ``device``."""
    training = row.task == "train"
    with device:
        if row.source.startswith("ours"):
            return effnet.create_model(f"efficientnet_{row.network}")
        name = "resnet50" if row.network == "resnet50" else f"efficientnet_{row.network}"
        if row.source == "torchvision":
            return build_torchvision(name)
        return build_timm(name, **({"drop_path_rate": 0.2} if training and name != "resnet50" else {}))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def runnable_for(row: Row, network: torch.nn.Module, images: torch.Tensor, opts: Options):
    """What a step calls: the network, compiled, effnet's CUDA inference path (BN folded, fused
    kernels, CUDA graphs; its eager form on the CPU) or effnet's low-memory training (cheap
    activations recomputed in backward), compiled."""
    if row.source.startswith("ours_fast"):
        backend = opts.compile_backend if row.source == "ours_fast_compiled" else None
        prepared = prepare_for_inference(network, images.device, dtype=torch.bfloat16,
                                         cuda_graphs=images.device.type == "cuda", compile_backend=backend)
        check_prepared(row, network, prepared, images)
        return prepared
    if row.source == "ours_lowmem":
        network.set_memory_mode("recompute")
    return torch.compile(network, backend=opts.compile_backend) if row.compiled else network


def check_prepared(row: Row, network: torch.nn.Module, prepared, images: torch.Tensor) -> None:
    """A fast row times only a prepared network whose logits are the eager network's (bf16
    autocast) within :data:`FAST_PATH_TOLERANCE` of the largest logit; else the row fails."""
    with torch.no_grad():
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            expected = network(images).float()
        got = prepared(images).float()
    error = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6))
    log(f"{row.key}: prepared logits against the eager network's: max error {error:.2e} of the largest logit")
    if not error <= FAST_PATH_TOLERANCE:
        raise RuntimeError(f"the prepared logits differ from the eager network's by {error:.3g} of the largest "
                           f"logit (tolerance {FAST_PATH_TOLERANCE})")


def make_step(row: Row, opts: Options, device: torch.device):
    """The row's network and a function doing one batch: a forward (infer) or an SGD step (train)."""
    resolution, batch = opts.size(row.network)
    network = build_network(row, device).to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, resolution, resolution, device=device).contiguous(
        memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    if row.task == "infer":
        network.eval()
        runnable = runnable_for(row, network, images, opts)
        # the prepared path holds its weights in bf16 already (and its graphs need no autocast)
        precision = contextlib.nullcontext() if row.source.startswith("ours_fast") else autocast

        def step() -> None:
            with torch.no_grad(), precision:
                runnable(images)
        return network, step

    network.train()
    runnable = runnable_for(row, network, images, opts)
    labels = torch.randint(0, 1000, (batch,), device=device)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(runnable(images), labels)
        loss.backward()
        optimizer.step()
    return network, step


def warm_up(step, device: torch.device, opts: Options, result: Result) -> float:
    """The first call (compilation, cuDNN's algorithm search), then more until warm; returns
    the seconds per step of the last warm-up call."""
    began = time.perf_counter()
    step()
    synchronize(device)
    result.first_call_s = round(time.perf_counter() - began, 3)
    return continue_warm_up(step, device, opts)


def continue_warm_up(step, device: torch.device, opts: Options) -> float:
    calls, began, last = 0, time.perf_counter(), 0.0
    while calls < opts.min_warmup_calls or time.perf_counter() - began < opts.warmup_seconds:
        one = time.perf_counter()
        step()
        synchronize(device)
        last = time.perf_counter() - one
        calls += 1
    return last


def time_loops(step, device: torch.device, opts: Options, seconds_per_step: float, result: Result) -> None:
    """Median of 3 loops of the same number of steps, each synchronized at both ends."""
    steps = max(2, min(200, math.ceil(opts.loop_seconds / max(seconds_per_step, 1e-6))))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loops = []
    for _ in range(3):
        synchronize(device)
        began = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        loops.append(time.perf_counter() - began)
    median = statistics.median(loops)
    result.loop_seconds = [round(s, 5) for s in loops]
    result.steps_per_loop = steps
    result.ms_per_step = round(1000 * median / steps, 4)
    result.img_s = round(result.batch * steps / median, 1)
    if device.type == "cuda":
        result.peak_gib = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def failure(error: BaseException) -> str:
    message = first_line(error)
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in message.lower():
        return "out of memory"
    return f"error: {type(error).__name__}: {message}"


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_eager(row: Row, opts: Options) -> Result:
    device = torch.device(opts.device)
    resolution, batch = opts.size(row.network)
    result = Result(row, resolution, batch)
    try:
        network, step = make_step(row, opts, device)
        time_loops(step, device, opts, warm_up(step, device, opts, result), result)
    except Exception as error:  # noqa: BLE001 - one failed row must not end the run
        result.status = failure(error)
    network = step = None  # noqa: F841 - free the row's memory before the next one
    release(device)
    return result


# --- the input job: B0 training fed from a folder of JPEGs -----------------------------------

def run_input(opts: Options, deadline: float, record) -> None:
    """Write the JPEG folder, then time B0 training fed each of :data:`FEEDS` ways
    (benchmarks/gpu_input.py), one row per feed."""
    rows = [Row("input", "b0", False, feed) for feed in FEEDS if opts.only in f"input_b0.{feed}"]
    if not rows:
        return
    resolution, batch = opts.size("b0")
    if deadline - time.monotonic() < INPUT_RESERVE_S * (1 if opts.sizes == "anchors" else 0.1):
        for row in rows:
            record(skipped(row, opts, "skipped: time budget used up"))
        return
    device = torch.device(opts.device)
    workers = opts.input_workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="effnet_gpu_jpegs_") as folder:
        began = time.monotonic()
        sizes = (350, 500) if opts.sizes == "anchors" else (40, 64)
        gpu_input.write_jpegs(Path(folder), opts.input_images, sizes, processes=workers)
        log(f"input job: wrote {opts.input_images} JPEGs in {time.monotonic() - began:.1f}s")
        try:
            rates, _ = gpu_input.measure(Path(folder), device, resolution, batch, workers, opts.input_steps,
                                         opts.input_warmup)
        except Exception as error:  # noqa: BLE001 - the other jobs still run
            rates, status = {}, failure(error)
        else:
            status = "skipped: timm is not installed"
    release(device)
    for row in rows:
        rate = rates.get(row.source)
        result = Result(row, resolution, batch, status="ok" if rate else status, steps_per_loop=opts.input_steps)
        if rate:
            result.img_s = round(rate, 1)
            result.ms_per_step = round(1000 * batch / rate, 4)
        record(result)


# --- compiled rows: one process each, compiled together, timed one at a time ----------------

def child_main(key: str, workdir: Path) -> int:
    """A compiled row in its own process: compile and warm up, say 'ready', wait for 'go', time."""
    opts = Options(**json.loads((workdir / "options.json").read_text()))
    opts.apply()
    row = next(r for r in plan() if r.key == key)
    device = torch.device(opts.device)
    resolution, batch = opts.size(row.network)
    result = Result(row, resolution, batch)
    parent = os.getppid()
    # A hard stop of our own, should the parent be gone before it can kill us.
    signal.alarm(max(1, math.ceil(float((workdir / "deadline").read_text()) + 30 - time.time())))
    try:
        network, step = make_step(row, opts, device)
        warm_up(step, device, opts, result)
        write_atomic(workdir / f"{key}.ready", str(result.first_call_s))
        while not (workdir / f"{key}.go").exists():
            if os.getppid() != parent:
                return 1
            time.sleep(0.05)
        time_loops(step, device, opts, continue_warm_up(step, device, opts), result)
    except Exception as error:  # noqa: BLE001 - reported in the row
        result.status = failure(error)
    write_atomic(workdir / f"{key}.json", json.dumps(result.to_json()))
    return 0


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that a reader sees the whole file or none."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_compiled(rows: list[Row], opts: Options, deadline: float, record) -> None:
    """Start every compiled row's process, wait until all are warm (or the compile deadline),
    then let each time its loops alone, most important first."""
    if not rows:
        return
    remaining = deadline - time.monotonic()
    window = remaining - COMPILED_TIMING_S * len(rows)
    if window < MIN_COMPILE_WINDOW_S:
        for row in rows:
            record(skipped(row, opts, f"skipped: {remaining:.0f}s of the budget left, too little to compile"))
        return
    with tempfile.TemporaryDirectory(prefix="effnet_gpu_bench_") as tmp:
        workdir = Path(tmp)
        (workdir / "options.json").write_text(json.dumps(asdict(opts)))
        (workdir / "deadline").write_text(str(time.time() + deadline - time.monotonic()))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
                   TORCHINDUCTOR_COMPILE_THREADS=str(max(1, (os.cpu_count() or 2) // len(rows))))
        children = {row: subprocess.Popen([sys.executable, __file__, "--child", row.key, "--workdir", tmp],
                                          env=env) for row in rows}
        try:
            compile_deadline = time.monotonic() + window
            log(f"compiling {len(rows)} rows in parallel (deadline {window:.0f}s)")
            while time.monotonic() < compile_deadline and any(
                    not (workdir / f"{row.key}.ready").exists() and child.poll() is None
                    for row, child in children.items()):
                time.sleep(0.2)
            ready = [row for row in rows if (workdir / f"{row.key}.ready").exists()]
            for row in rows:
                if row in ready:
                    log(f"{row.key}: compiled and warm, first call "
                        f"{float((workdir / f'{row.key}.ready').read_text()):.1f}s")
                    continue
                killed = children[row].poll() is None
                stop(children[row])
                record(read_result(workdir, row, opts, "skipped: compile did not finish in time" if killed
                                   else "error: the process ended without a result"))
            for row in ready:
                if deadline - time.monotonic() < 3.0:
                    stop(children[row])
                    record(skipped(row, opts, "skipped: time budget used up"))
                    continue
                (workdir / f"{row.key}.go").touch()
                try:
                    children[row].wait(timeout=min(2 * COMPILED_TIMING_S, deadline + 5.0 - time.monotonic()))
                    note = "error: the process ended without a result"
                except subprocess.TimeoutExpired:
                    stop(children[row])
                    note = "skipped: timing did not finish in time"
                record(read_result(workdir, row, opts, note))
        finally:
            for child in children.values():
                stop(child)


def stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
        child.wait()


def read_result(workdir: Path, row: Row, opts: Options, note: str) -> Result:
    path = workdir / f"{row.key}.json"
    if not path.exists():
        return skipped(row, opts, note if note != "error" else "error: the process ended without a result")
    data = json.loads(path.read_text())
    resolution, batch = opts.size(row.network)
    result = Result(row, resolution, batch)
    for name in ("status", "img_s", "ms_per_step", "loop_seconds", "steps_per_loop", "peak_gib", "first_call_s"):
        setattr(result, name, data[name])
    return result


def skipped(row: Row, opts: Options, note: str) -> Result:
    resolution, batch = opts.size(row.network)
    return Result(row, resolution, batch, status=note)


# --- the run -------------------------------------------------------------------------------

def environment(opts: Options) -> dict:
    device = torch.device(opts.device)
    info = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": None, "effnet": effnet.__version__, "device": opts.device, "sizes": opts.sizes,
            "compile_backend": opts.compile_backend, "budget_s": opts.budget_s, "dtype": "bf16 autocast",
            "memory_format": "channels_last", "cudnn_benchmark": device.type == "cuda"}
    if timm_available():
        import timm
        info["timm"] = timm.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def ratios(results: list[Result]) -> list[dict]:
    """ours / peer images per second, per job (above 1: ours is faster)."""
    by_key = {r.row.key: r for r in results if r.status == "ok"}
    found = []
    for job in dict.fromkeys(r.row.job for r in results):
        ours = by_key.get(f"{job}.ours")
        for peer in ("torchvision", "timm"):
            other = by_key.get(f"{job}.{peer}")
            if ours and other:
                found.append({"job": job, "peer": peer, "ours_img_s": ours.img_s, "peer_img_s": other.img_s,
                              "ratio": round(ours.img_s / other.img_s, 3)})
    return found


def aims(results: list[Result]) -> list[dict]:
    """Each of :data:`AIMS` whose two rows both ran: the ratio and whether it meets the aim."""
    by_key = {r.row.key: r for r in results if r.status == "ok"}
    found = []
    for job, ours, other_job, peer, measure, aim in AIMS:
        mine, theirs = by_key.get(f"{job}.{ours}"), by_key.get(f"{other_job}.{peer}")
        if not (mine and theirs and getattr(mine, measure) and getattr(theirs, measure)):
            continue
        ratio = getattr(mine, measure) / getattr(theirs, measure)
        met = ratio >= aim if measure == "img_s" else ratio <= aim
        found.append({"ours": mine.row.key, "other": theirs.row.key, "measure": measure, "ratio": round(ratio, 3),
                      "aim": aim, "met": met})
    return found


def summary_table(results: list[Result]) -> str:
    def cell(value: float | None, spec: str, width: int) -> str:
        return ("-" if value is None else format(value, spec)).rjust(width)

    lines = [f"{'job':<20} {'source':<12} {'res':>4} {'batch':>5} {'img/s':>10} {'anchor':>8} "
             f"{'peak GiB':>8} {'1st call s':>10}  status"]
    for r in results:
        anchor = ANCHORS.get((r.row.job, r.row.source))
        lines.append(f"{r.row.job:<20} {r.row.source:<12} {r.resolution:>4} {r.batch:>5} "
                     f"{cell(r.img_s, ',.1f', 10)} {cell(anchor, ',', 8)} {cell(r.peak_gib, '.2f', 8)} "
                     f"{cell(r.first_call_s, '.1f', 10)}  {r.status}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_bench.json", help="JSON results (default ./gpu_bench.json)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on the CPU, one thread, compile backend 'aot_eager', compiled rows of ours "
                        "only: checks the whole script in a minute or two")
    parser.add_argument("--device", default=None, help="cuda (default) or cpu")
    parser.add_argument("--sizes", choices=("anchors", "tiny"), default=None,
                        help="anchors: the table's sizes (default); tiny: 32 px, batch 2 (same code path)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 470)")
    parser.add_argument("--compile-sources", default=None,
                        help="sources of the rows that run in their own process (default "
                        "ours_fast,ours_fast_compiled,ours_lowmem,timm; add ours and torchvision for their plain "
                        "compiled B0; --smoke: ours's only)")
    parser.add_argument("--only", default="", help="run only rows whose key contains this text, e.g. infer_b0")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first row that fails with an error")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, Path(args.workdir))

    smoke = {"device": "cpu", "sizes": "tiny", "compile_backend": "aot_eager", "budget_s": 240.0, "loop_seconds": 0.02,
             "warmup_seconds": 0.0, "min_warmup_calls": 1, "cpu_threads": 1, "input_images": 40,
             "input_steps": 2, "input_warmup": 1, "input_workers": 1,
             "compile_sources": "ours,ours_fast,ours_fast_compiled,ours_lowmem"} if args.smoke else {}
    chosen = {"device": args.device, "sizes": args.sizes, "compile_backend": args.compile_backend,
              "budget_s": args.budget, "compile_sources": args.compile_sources, "only": args.only}
    opts = Options(**{**smoke, **{k: v for k, v in chosen.items() if v is not None}})
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: CUDA is not available here; run with --smoke (or --device cpu) on a machine without a GPU",
              file=sys.stderr)
        return 2
    opts.apply()
    deadline = START + opts.budget_s
    out = Path(args.out)
    info = environment(opts)
    log(f"effnet GPU benchmark: {json.dumps(info)}")
    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        speed = "" if result.img_s is None else f"{result.img_s:,.1f} img/s, "
        memory = "" if result.peak_gib is None else f"peak {result.peak_gib:.2f} GiB, "
        log(f"{result.row.key} ({result.resolution}px, batch {result.batch}): {speed}{memory}{result.status}")
        write_json(out, info, results)

    rows = [row for row in plan() if opts.only in row.key
            and (not row.compiled or row.source in opts.compile_sources.split(","))]
    timm_ok = timm_available()
    for row in rows:
        if row.compiled or row.task == "input":
            continue
        if row.source == "timm" and not timm_ok:
            record(skipped(row, opts, "skipped: timm is not installed"))
        elif deadline - time.monotonic() < EAGER_ROW_RESERVE_S:
            record(skipped(row, opts, "skipped: time budget used up"))
        else:
            record(run_eager(row, opts))
            if args.fail_fast and results[-1].status.startswith("error"):
                log("stopping at the first error (--fail-fast)")
                write_json(out, info, results)
                return 1
    run_input(opts, deadline, record)
    compiled = []
    for row in rows:
        if row.compiled and row.source == "timm" and not timm_ok:
            record(skipped(row, opts, "skipped: timm is not installed"))
        elif row.compiled:
            compiled.append(row)
    run_compiled(compiled, opts, deadline, record)

    order = {row.key: index for index, row in enumerate(plan())}
    results.sort(key=lambda r: order[r.row.key])
    write_json(out, info, results)
    print(summary_table(results), flush=True)
    for item in ratios(results):
        print(f"{item['job']:<20} ours/{item['peer']:<12} {item['ratio']:.3f}  "
              f"({item['ours_img_s']:,.1f} vs {item['peer_img_s']:,.1f} img/s)", flush=True)
    for item in aims(results):
        relation = ">=" if item["measure"] == "img_s" else "<="
        print(f"aim {item['ours']} / {item['other']} ({item['measure']}): {item['ratio']:.3f}, aim {relation} "
              f"{item['aim']}: {'met' if item['met'] else 'NOT met'}", flush=True)
    log(f"wrote {out}")
    return 0


def write_json(path: Path, info: dict, results: list[Result]) -> None:
    payload = {"environment": info, "elapsed_s": round(time.monotonic() - START, 1),
               "rows": [r.to_json() for r in results], "ratios": ratios(results), "aims": aims(results)}
    write_atomic(path, json.dumps(payload, indent=1))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
