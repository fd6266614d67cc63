"""Edge files against fp32 PyTorch: ExecuTorch (.pte, XNNPACK) and LiteRT (.tflite), fp32 and INT8,
beside ONNX Runtime fp32 and INT8 measured in the same run.

    python benchmarks/edge.py [--models efficientnet_lite0,efficientnet_b0] [--threads 1]
                              [--calib 32] [--eval 48] [--rounds 5] [--calls 10]

Needs the ``edge`` extra (run it with .venv-edge/bin/python). Real ImageNet weights where they
are on this machine (``pretrained=True``, offline), else random weights with BatchNorm
statistics recomputed on other photos (said in the output). Real photos: scikit-image's
bundled pictures and random crops/flips of them through effnet's eval preprocessing;
calibration and evaluation images differ. For each
network and target: top-1 agreement with fp32 eager PyTorch, logit SQNR (dB), file size,
conversion time, batch-1 latency (p50 over every call, and the spread of the per-round p50s;
rounds interleave the candidates so that a busy machine slows them alike; x ORT: against ONNX
Runtime fp32 in the same run), and the ops an INT8 .tflite still computes in float.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import effnet  # noqa: E402
from effnet.data.transforms import eval_transforms  # noqa: E402
from effnet.deploy.edge import edge_runner, write_edge  # noqa: E402
from effnet.deploy.environment import describe_cpu, library_versions  # noqa: E402
from effnet.deploy.export import export_model  # noqa: E402
from effnet.deploy.quantize import OrtRecipe, quantize_onnx  # noqa: E402
from effnet.deploy.runtime import Runner, onnx_runner, torch_runner  # noqa: E402
from effnet.table import format_table  # noqa: E402
from effnet.weights.errors import WeightsUnavailableError  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "stereo_motorcycle", "colorwheel", "cat", "camera", "coins", "moon", "clock", "brick", "grass", "gravel",
          "cell", "logo", "page")
EDGE_TARGETS = {"executorch": ("executorch", False), "executorch-int8": ("executorch", True),
                "tflite": ("litert", False), "tflite-int8": ("litert", True)}


def photos(count: int, seed: int) -> list[Image.Image]:
    """``count`` real photos: random crops (35-90% of a side) of scikit-image's pictures, half flipped."""
    import skimage.data

    bases = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        array = np.asarray(array[0] if isinstance(array, tuple) else array)
        bases.append(Image.fromarray(array.astype(np.uint8) * (255 if array.dtype == bool else 1)).convert("RGB"))
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        image = bases[rng.integers(len(bases))]
        width, height = image.size
        scale = rng.uniform(0.35, 0.9)
        w, h = int(width * scale), int(height * scale)
        x, y = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
        crop = image.crop((x, y, x + w, y + h))
        out.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return out


def load_network(name: str) -> tuple[effnet.EfficientNet, str]:
    """The network with its ImageNet weights if they are on this machine, else random weights."""
    try:
        return effnet.create_model(name, pretrained=True).eval(), "ImageNet"
    except WeightsUnavailableError:
        torch.manual_seed(0)
        return effnet.create_model(name).eval(), "random (BatchNorm statistics recomputed on photos)"


def recompute_statistics(model: effnet.EfficientNet, images: torch.Tensor) -> None:
    """BatchNorm statistics of random weights recomputed on real photos: a fresh network's (mean 0,
    variance 1) let activations explode or vanish with depth, which makes INT8 figures meaningless."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # the average over all batches
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), 16):
            model(images[start:start + 16])
    model.eval()


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.square(reference.astype(np.float64) - other).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float(np.square(reference.astype(np.float64)).sum()) / noise)


def interleaved_latency(runners: dict[str, Runner], one: np.ndarray, rounds: int, calls: int) -> dict:
    """Per runner: p50 over every timed call and the lowest and highest per-round p50 (ms)."""
    times: dict[str, list[list[float]]] = {name: [] for name in runners}
    for runner in runners.values():
        for _ in range(3):
            runner(one)
    for _ in range(rounds):
        for name, runner in runners.items():
            round_times = []
            for _ in range(calls):
                start = time.perf_counter()
                runner(one)
                round_times.append((time.perf_counter() - start) * 1e3)
            times[name].append(round_times)
    return {name: (statistics.median([t for r in per for t in r]), min(map(statistics.median, per)),
                   max(map(statistics.median, per))) for name, per in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="efficientnet_lite0,efficientnet_b0")
    parser.add_argument("--threads", type=int, default=1, help="threads of every runtime (default 1)")
    parser.add_argument("--calib", type=int, default=32, help="calibration photos (default 32)")
    parser.add_argument("--eval", type=int, default=48, help="evaluation photos (default 48)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per candidate and round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {describe_cpu()}; {args.threads} thread(s) per runtime; load {os.getloadavg()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in library_versions().items()))
    headers = ["model", "target", "agreement %", "SQNR dB", "file MB", "p50 ms", "round p50s ms", "x ORT fp32",
               "convert s", "float ops (INT8 .tflite)", "load"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="effnet-edge-") as work_name:
        work = Path(work_name)
        for name in args.models.split(","):
            model, weights = load_network(name)
            transform = eval_transforms(model.preprocessing)
            calibration = torch.stack([transform(p) for p in photos(args.calib, seed=0)])
            if weights != "ImageNet":
                recompute_statistics(model, torch.stack([transform(p) for p in photos(48, seed=7)]))
            print(f"{name}: {weights} weights", flush=True)
            evaluation = torch.stack([transform(p) for p in photos(args.eval, seed=1)])
            with torch.inference_mode():
                reference = model(evaluation).numpy()
            runners: dict[str, Runner] = {"pytorch eager": torch_runner(model, "pytorch eager")}
            facts: dict[str, tuple[float, float, str, tuple]] = {"pytorch eager": (0.0, 0.0, "", os.getloadavg())}
            start = time.perf_counter()
            onnx = work / f"{name}.onnx"
            # the export's own check feeds noise, on which random weights give large logits; the SQNR
            # column is the check here
            export_model(model, onnx, "onnx", fold_bn=True, tolerance=1e-1)
            facts["onnxruntime"] = (onnx.stat().st_size / 1e6, time.perf_counter() - start, "", os.getloadavg())
            start = time.perf_counter()
            onnx_int8 = work / f"{name}.int8.onnx"
            quantize_onnx(onnx, onnx_int8, calibration, OrtRecipe())
            facts["onnxruntime-int8"] = (onnx_int8.stat().st_size / 1e6, time.perf_counter() - start, "",
                                         os.getloadavg())
            runners["onnxruntime"] = onnx_runner(onnx, args.threads, name="onnxruntime")
            runners["onnxruntime-int8"] = onnx_runner(onnx_int8, args.threads, name="onnxruntime-int8")
            for target, (runtime, int8) in EDGE_TARGETS.items():
                suffix = ".pte" if runtime == "executorch" else ".tflite"
                written = write_edge(model, work / f"{name}-{target}{suffix}", runtime,
                                     calibration if int8 else None)
                islands = (", ".join(f"{op} x{n}" for op, n in written.float_ops.items()) or "none"
                           if runtime == "litert" and int8 else "")
                facts[target] = (written.path.stat().st_size / 1e6, written.seconds, islands, os.getloadavg())
                runners[target] = edge_runner(written.path, runtime, args.threads, name=target)
                print(f"{name} {target}: converted in {written.seconds:.1f} s, load {os.getloadavg()}", flush=True)
            one = evaluation[:1].numpy()
            latency = interleaved_latency(runners, one, args.rounds, args.calls)
            ort_p50 = latency["onnxruntime"][0]
            for target, runner in runners.items():
                logits = runner(evaluation.numpy())
                size, seconds, islands, load = facts[target]
                p50, low, high = latency[target]
                rows.append([name, target, f"{100 * float((logits.argmax(1) == reference.argmax(1)).mean()):.1f}",
                             f"{sqnr_db(reference, logits):.1f}", f"{size:.2f}" if size else "-", f"{p50:.2f}",
                             f"{low:.2f}-{high:.2f}", f"{p50 / ort_p50:.2f}", f"{seconds:.1f}" if seconds else "-",
                             islands, f"{load[0]:.1f}"])
            print(format_table(headers, rows[-len(runners):]), flush=True)
    print(f"\nall rows ({args.eval} evaluation photos, {args.calib} calibration photos; load now "
          f"{os.getloadavg()}):")
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
