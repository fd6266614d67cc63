"""CPU batch-1 latency of our deployment paths against ONNX Runtime running torchvision's B0.

    python benchmarks/deploy_latency.py [--checkpoint CKPT] [--threads 2] [--rounds 20] [--pause 0.1]
                                        [--calib DIR] [--explore] [--compile] [--no-lite]

The peer is torchvision's efficientnet_b0 (random weights) exported the plain way,
``torch.onnx.export(model, (x,), path)``, and run by ONNX Runtime with the same number of
threads. Ours is B0 (random weights with realistic BatchNorm statistics, or --checkpoint),
exported by ``effnet export`` (BatchNorm folded, verified) and run by ONNX Runtime with all
graph optimizations; then INT8: ONNX Runtime QDQ (per-channel) and PT2E on oneDNN kernels;
with --compile also torch.compile (Inductor, frozen weights). INT8 is calibrated on --calib
images, or on random normal inputs when none are given (speed does not depend on it; accuracy
does, see deploy_int8.py). EfficientNet-Lite0 with its real ImageNet weights, the variant
made for CPU inference, is timed too (fp32 and INT8 through ONNX Runtime, also with the stem
kept in float, the recipe that keeps its accuracy): another network, reported beside B0, not
instead of it. With --explore, ONNX Runtime session options (threads, execution
mode, optimization level) are timed too.

Every candidate is timed in turns with the others (effnet.bench.measure.time_interleaved),
many calls per round, and compared by medians: absolute times move with the machine's load,
the ratios to the peer measured in the same run are what to read. Before each candidate's
calls the process idles for --pause seconds: every ONNX Runtime session and PyTorch's OpenMP
pool keep their worker threads spinning for a while after a call, and on two cores they would
take the cores from the next candidate (timed back to back, every candidate's p90 doubles).
The int8 instructions the CPU offers (VNNI, AMX) are printed: without them int8 kernels gain
little over fp32. Aim: <= 0.5x the peer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

import effnet  # noqa: E402
from effnet.bench.measure import time_interleaved  # noqa: E402
from effnet.deploy.calibration import calibration_images  # noqa: E402
from effnet.deploy.export import export_model  # noqa: E402
from effnet.deploy.pipeline import load_deployable  # noqa: E402
from effnet.deploy.quantize import OrtRecipe, lower_for_cpu, quantize_onnx, quantize_pt2e  # noqa: E402
from effnet.deploy.runtime import Runner, onnx_runner, onnxruntime_session, torch_runner  # noqa: E402
from effnet.table import format_table  # noqa: E402
from effnet.testing import randomize_statistics  # noqa: E402

AIM = 0.5
LITE = "Lite0 (another network, 75.1% ImageNet top-1)"
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_instructions() -> str:
    """The int8 dot-product instruction sets this CPU reports (Linux), for reading the figures."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "not reported"
    present = [flag for flag in INT8_FLAGS if flag in flags.split()]
    return ", ".join(present) if present else "none (no VNNI, no AMX)"


def our_model(checkpoint: str | None) -> torch.nn.Module:
    if checkpoint:
        return load_deployable(checkpoint)
    return randomize_statistics(effnet.create_model("efficientnet_b0"), biases=False)


def session_runner(path: Path, name: str, **options) -> Runner:
    session = onnxruntime_session(path, **options)
    input_name = session.get_inputs()[0].name
    return Runner(name, lambda batch: session.run(None, {input_name: batch})[0])


def onnx_candidates(model: torch.nn.Module, label: str, path: Path, calibration: torch.Tensor,
                    threads: int, int8_recipes: dict[str, OrtRecipe]) -> dict[str, Runner]:
    """``model`` exported by ``effnet export`` (BN folded, verified) and its INT8 QDQ versions, in ONNX Runtime."""
    result = export_model(model, path, "onnx", fold_bn=True)
    print(f"{label} export: {result.verification.describe()}", flush=True)
    runners = {f"{label}: ORT fp32 (BN folded, opt all)": onnx_runner(path, threads)}
    for index, (name, recipe) in enumerate(int8_recipes.items()):
        int8 = quantize_onnx(path, path.with_suffix(f".int8-{index}.onnx"), calibration, recipe)
        runners[f"{label}: ORT int8 QDQ {name}"] = onnx_runner(int8, threads)
    return runners


def candidates(args: argparse.Namespace, work: Path) -> dict[str, Runner]:
    model = our_model(args.checkpoint)
    resolution = model.preprocessing.resolution
    example = torch.randn(1, 3, resolution, resolution)
    runners: dict[str, Runner] = {}

    peer = torchvision.models.efficientnet_b0(weights=None).eval()
    peer_path = work / "torchvision_b0.onnx"
    torch.onnx.export(peer, (torch.randn(1, 3, resolution, resolution),), str(peer_path))
    runners["peer: torchvision B0, plain torch.onnx.export, ORT fp32"] = onnx_runner(peer_path, args.threads)

    if args.calib:
        calibration = calibration_images(args.calib, model.preprocessing, 128)
    else:
        calibration = torch.randn(64, 3, resolution, resolution)
    runners.update(onnx_candidates(model, "ours", work / "effnet_b0.onnx", calibration, args.threads,
                                   {"per-channel": OrtRecipe()}))
    converted = quantize_pt2e(model, calibration)
    runners["ours: PT2E int8 (oneDNN)"] = lower_for_cpu(converted)
    runners["ours: eager PyTorch fp32"] = torch_runner(model)
    if not args.no_lite:
        lite = effnet.create_model("efficientnet_lite0", pretrained=True).eval()
        runners.update(onnx_candidates(lite, LITE, work / "effnet_lite0.onnx", calibration, args.threads,
                                       {"per-channel": OrtRecipe(),
                                        "per-channel, stem float": OrtRecipe(keep_float=("stem",))}))
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(model)
        runners["ours: torch.compile Inductor fp32 (frozen)"] = torch_runner(compiled)
    if args.explore:
        for label, options in {
            "ORT fp32, default threads": {"threads": None},
            "ORT fp32, opt extended": {"threads": args.threads, "optimization": "extended"},
            "ORT fp32, opt basic": {"threads": args.threads, "optimization": "basic"},
            "ORT fp32, parallel executor": {"threads": args.threads, "parallel": True},
        }.items():
            runners[f"ours: {label}"] = session_runner(work / "effnet_b0.onnx", label, **options)
    batch = example.numpy()
    for name, runner in runners.items():
        runner(batch)  # load, lower or compile before timing
        print(f"ready: {name}", flush=True)
    return runners


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="our B0 checkpoint (default: random weights)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=10, help="calls of each candidate per round")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="idle seconds before each candidate's calls, for spinning worker threads to park")
    parser.add_argument("--calib", default=None, help="calibration images for the INT8 candidates")
    parser.add_argument("--explore", action="store_true", help="also time ONNX Runtime session options")
    parser.add_argument("--no-lite", action="store_true",
                        help="leave out EfficientNet-Lite0 (real weights), the network made for fast CPU inference")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="effnet-latency-") as work:
        runners = candidates(args, Path(work))
        batch = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
        times = time_interleaved({name: (lambda r=runner: r(batch)) for name, runner in runners.items()},
                                 rounds=args.rounds, calls_per_round=args.calls, warmup=3,
                                 pause=args.pause)
    peer_name = next(iter(times))
    peer = statistics.median(times[peer_name])
    rows = []
    for name, seconds in times.items():
        median = statistics.median(seconds)
        rows.append([name, f"{1000 * median:.2f}", f"{1000 * np.percentile(seconds, 10):.2f}",
                     f"{1000 * np.percentile(seconds, 90):.2f}", f"{median / peer:.2f}x"])
    print(f"\nB0 @224, batch 1, {args.threads} threads, {args.rounds} rounds x {args.calls} calls, interleaved; "
          f"{args.pause} s pause before each candidate; {os.cpu_count()} CPUs visible, load average "
          f"{os.getloadavg()[0]:.1f} (a shared machine skews absolute times, not the ratios); int8 instructions: "
          f"{int8_instructions()}")
    print(format_table(["candidate", "median ms", "p10 ms", "p90 ms", "vs peer"], rows))
    for network, names in (("B0", [n for n in times if n.startswith("ours")]),
                           ("Lite0", [n for n in times if n.startswith(LITE)])):
        if names:
            best_name, best = min(((n, statistics.median(times[n])) for n in names), key=lambda item: item[1])
            verdict = "met" if best / peer <= AIM else "NOT met"
            print(f"best {network}: {best_name}: {best / peer:.2f}x the peer's latency (aim <= {AIM}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
