"""Bulk inference: ``effnet predict --engine ray`` against single-process ``effnet predict``.

    python benchmarks/ray_predict.py [--images 5000] [--model efficientnet_b0] [--batch-size 32]
        [--actors N] [--two-nodes] [--work DIR]

Writes ``--images`` JPEGs of 350-500 px (crops of scikit-image's photos, seeded) and a B0 fp32
checkpoint (random weights, 1000 classes: speed does not depend on them), then runs from the
command line, one after the other, on the same files and with the same total threads (the
machine's cores: torch's default in the single process; the Ray engine's plan gives its actors
the cores left beside the reading tasks):

- ``effnet predict FOLDER --out single.csv`` (decoding and the model in one process), and the same
  over one image, whose wall time is the single process's fixed cost (imports, model load), so
  that its steady rate is ``(images - 1) / (wall - wall of one image)``;
- ``effnet predict FOLDER --engine ray --out ray.parquet``: a local Ray on this machine's cores;
  its summary line gives the start-up (to the first result) and the steady rate after it;
- with ``--two-nodes``, the Ray engine again on a cluster of two 1-CPU nodes simulated on this
  machine (``ray.cluster_utils.Cluster``), joined with ``--ray-address``.

Printed: wall time, start-up, steady images/s, each run's ratio to the single process, the load
average and the CPU, and the CPU time of all the processes of each run (the benchmark is their
subreaper: Ray's daemons and workers, orphaned when a run ends, are reaped and counted here).
On a machine shared with other work, wall times follow the neighbours' load (a run of many
processes gets a larger share of the cores than one process), CPU time per image much less.
Aims on 2 cores: steady Ray >= 0.8x the single process, whole Ray run within 1.5x of the single
process's wall time.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from effnet import create_model  # noqa: E402
from effnet.deploy.environment import describe_cpu  # noqa: E402
from effnet.table import format_table  # noqa: E402
from effnet.weights.io import save_model  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field")
SIDES = (350, 500)
STEADY_AIM, TOTAL_AIM = 0.8, 1.5
PR_SET_CHILD_SUBREAPER = 36
REAP_WAIT_S = 300.0
SUMMARY = re.compile(r"(\d+) prediction\(s\) written \((\d+) failed\) in ([\d.]+) s: start-up ([\d.]+) s, "
                     r"then ([\d.]+) images/s")


def write_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs of 350-500 px a side: random crops of the photos, resized (quality 90)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == count:
        return
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = (int(side) for side in rng.integers(SIDES[0], SIDES[1] + 1, 2))
        left = int(rng.integers(0, max(1, photo.width // 4)))
        top = int(rng.integers(0, max(1, photo.height // 4)))
        crop = photo.crop((left, top, photo.width - left // 2, photo.height - top // 2)).resize((width, height))
        crop.save(folder / f"{i:06d}.jpg", quality=90)


@dataclass
class Run:
    wall: float
    startup: float
    steady: float
    cpu: float
    load: float


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reap_all() -> None:
    """Wait for every process left under this one (Ray's, reparented here), so that its CPU time counts."""
    deadline = time.monotonic() + REAP_WAIT_S
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.2)
        except ChildProcessError:
            return
    print(f"warning: processes still running {REAP_WAIT_S:g} s after the run: their CPU time is not counted")


def effnet_predict(*args: str, reap: bool = True) -> tuple[float, str, float]:
    """Run ``effnet predict ARGS`` in a new process; its wall time, stdout, and the CPU time of it
    (``reap``: and of every process it left; without, other children must not be running)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "packages/effnet-runtime/src"),
                                                        os.environ.get("PYTHONPATH", "")]))
    cpu = children_cpu()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "effnet", "predict", *args, "--no-progress"], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"effnet predict {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if reap:
        reap_all()
    return seconds, done.stdout, children_cpu() - cpu


def ray_run(images: Path, checkpoint: Path, out: Path, batch: int, extra: list[str], reap: bool = True) -> Run:
    seconds, stdout, cpu = effnet_predict(str(images), "--checkpoint", str(checkpoint), "--engine", "ray",
                                          "--out", str(out), "--batch-size", str(batch), *extra, reap=reap)
    found = SUMMARY.search(stdout)
    if found is None:
        raise SystemExit(f"no summary in the Ray run's output:\n{stdout}")
    return Run(seconds, float(found[4]), float(found[5]), cpu, os.getloadavg()[0])


def two_node_run(images: Path, checkpoint: Path, out: Path, batch: int) -> Run:
    """The Ray engine on two simulated 1-CPU nodes (the cluster's start-up not timed; its CPU time counted)."""
    from ray.cluster_utils import Cluster

    cpu = children_cpu()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "temp_dir": temp})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        run = ray_run(images, checkpoint, out, batch, ["--ray-address", cluster.address], reap=False)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    reap_all()
    run.cpu = children_cpu() - cpu
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--actors", type=int, help="the Ray engine's --actors (default: its plan's)")
    parser.add_argument("--two-nodes", action="store_true", help="also run on a simulated 2 x 1-CPU cluster")
    parser.add_argument("--work", type=Path, help="folder for images, checkpoint and outputs (default: temporary)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # Linux; elsewhere: fewer CPU-s
    work = args.work or Path(tempfile.mkdtemp(prefix="ray_predict_"))
    images, one = work / "images", work / "one"
    write_images(images, args.images)
    one.mkdir(exist_ok=True)
    (one / "000000.jpg").write_bytes((images / "000000.jpg").read_bytes())
    checkpoint = work / f"{args.model}.safetensors"
    if not checkpoint.is_file():
        save_model(create_model(args.model, num_classes=1000), checkpoint)
    for old in ("ray.parquet", "ray2.parquet"):
        shutil.rmtree(work / old, ignore_errors=True)
    print(f"CPU: {describe_cpu()}")
    print(f"{args.images} JPEGs of {SIDES[0]}-{SIDES[1]} px, {args.model} fp32, batch {args.batch_size}; "
          f"load before: {os.getloadavg()}", flush=True)

    common = ["--checkpoint", str(checkpoint), "--batch-size", str(args.batch_size), "--device", "cpu"]
    fixed, _, _ = effnet_predict(str(one), *common, "--out", str(work / "one.csv"))
    wall, _, cpu = effnet_predict(str(images), *common, "--out", str(work / "single.csv"))
    single = Run(wall, fixed, (args.images - 1) / (wall - fixed), cpu, os.getloadavg()[0])
    print(f"single process: {single}", flush=True)
    runs = {"effnet predict (1 process)": single}
    extra = ["--actors", str(args.actors)] if args.actors else []
    local = runs["--engine ray (local, this machine's cores)"] = ray_run(images, checkpoint, work / "ray.parquet",
                                                                          args.batch_size, extra)
    print(f"Ray, local: {local}", flush=True)
    if args.two_nodes:
        runs["--engine ray (2 simulated 1-CPU nodes)"] = two_node_run(images, checkpoint, work / "ray2.parquet",
                                                                      args.batch_size)
    rows = [[name, f"{run.wall:.1f}", f"{run.startup:.1f}", f"{run.steady:.1f}", f"{run.steady / single.steady:.2f}",
             f"{run.wall / single.wall:.2f}", f"{run.cpu:.0f}", f"{1000 * run.cpu / args.images:.0f}",
             f"{run.cpu / single.cpu:.2f}", f"{run.load:.1f}"] for name, run in runs.items()]
    print(format_table(["run", "wall s", "start-up s", "steady img/s", "steady / single", "wall / single", "CPU s",
                        "CPU ms/image", "CPU / single", "load (1 min)"], rows))
    print(f"Ray overhead: {local.wall - single.wall:+.1f} s wall ({local.startup - fixed:+.1f} s of start-up), "
          f"{local.cpu - single.cpu:+.0f} CPU s; aims: steady >= {STEADY_AIM}x "
          f"({'met' if local.steady >= STEADY_AIM * single.steady else 'missed'}), wall <= {TOTAL_AIM}x "
          f"({'met' if local.wall <= TOTAL_AIM * single.wall else 'missed'})")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
