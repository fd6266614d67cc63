"""INT8 against fp32 on the demo test set, for B0, Lite0 and V2-B0, with every remedy for
EfficientNet's known INT8 trouble (SiLU, squeeze-excitation, depthwise convs).

    python benchmarks/deploy_int8.py [--b0 CKPT] [--lite0 CKPT] [--v2-b0 CKPT] --data DEMO_DIR
                                     [--calib-images 256] [--qat-epochs 1] [--qat-images 2000]
                                     [--qat-keep-float stem] [--entropy] [--threads 2]

DEMO_DIR is what ``effnet data demo DIR`` writes: calibration (and QAT) images come from
DEMO_DIR/train, the 1,000 held-out digits of DEMO_DIR/val are the test set. For each network
every row is evaluated in one pass over the test set against ONNX Runtime fp32: top-1, the
drop in points, agreement (share of test images whose predicted class equals fp32's) and the
logit SQNR in dB (how close the logits stay, which moves before top-1 does), plus file size
and batch-1 latency. Rows:

- ONNX Runtime static QDQ: per-tensor weights (naive), per-channel (min/max, optionally
  entropy), and per-channel with layer groups kept in float: the squeeze-excitation modules,
  the SiLU/ReLU6 activations, the stem, the head and classifier;
- PT2E with the X86 Inductor quantizer (per-channel), with and without SE in float;
- quantization-aware training (PT2E, distillation from fp32) for --qat-epochs on
  --qat-images training digits (0: skip).

Aim for Lite0: a drop <= 0.3 points and agreement >= 99%. B0 is reported as it comes out.
Latencies are measured one row after another and are noisy on a shared machine; the
accuracy columns are exact.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from effnet.deploy.calibration import calibration_images, labelled_loader, unlabelled_loader  # noqa: E402
from effnet.deploy.compare import evaluate_runners, file_size, measure_speeds  # noqa: E402
from effnet.deploy.export import export_model, input_shape  # noqa: E402
from effnet.deploy.pipeline import load_deployable  # noqa: E402
from effnet.deploy.quantize import (  # noqa: E402
    OrtRecipe,
    Pt2eRecipe,
    QatSettings,
    lower_for_cpu,
    quantize_aware_train,
    quantize_onnx,
    quantize_pt2e,
    save_pt2e,
)
from effnet.deploy.runtime import onnx_runner  # noqa: E402
from effnet.table import format_table  # noqa: E402

AIM_DROP = 0.3
AIM_AGREEMENT = 0.99


def ort_recipes(has_se: bool, entropy: bool) -> dict[str, OrtRecipe]:
    recipes = {
        "ORT per-tensor (naive)": OrtRecipe(per_channel=False),
        "ORT per-channel": OrtRecipe(),
    }
    if entropy:
        recipes["ORT per-channel, entropy calibration"] = OrtRecipe(calibrate_method="entropy")
    if has_se:
        recipes["ORT per-channel, SE in float"] = OrtRecipe(keep_float=("se",))
    recipes["ORT per-channel, activations in float"] = OrtRecipe(keep_float=("activations",))
    recipes["ORT per-channel, stem in float"] = OrtRecipe(keep_float=("stem",))
    recipes["ORT per-channel, stem+head+classifier in float"] = OrtRecipe(keep_float=("stem", "head", "classifier"))
    if has_se:
        recipes["ORT per-channel, SE+stem+head+classifier in float"] = OrtRecipe(
            keep_float=("se", "stem", "head", "classifier"))
    return recipes


def benchmark(label: str, checkpoint: str, data: Path, args: argparse.Namespace, work: Path) -> list[list[str]]:
    model = load_deployable(checkpoint)
    has_se = model.config.se_ratio > 0
    shape = input_shape(model)
    calibration = calibration_images(data / "train", model.preprocessing, args.calib_images)
    fp32 = work / f"{label}.onnx"
    export_model(model, fp32, "onnx", fold_bn=True)
    runners = {"ORT fp32 (reference)": onnx_runner(fp32, args.threads)}
    files = {"ORT fp32 (reference)": fp32}
    for name, recipe in ort_recipes(has_se, args.entropy).items():
        started = time.perf_counter()
        path = quantize_onnx(fp32, work / f"{label}.{len(files)}.int8.onnx", calibration, recipe)
        runners[name], files[name] = onnx_runner(path, args.threads), path
        print(f"{label}: {name} quantized in {time.perf_counter() - started:.0f} s", flush=True)
    pt2e_recipes = {"PT2E per-channel (X86 Inductor)": Pt2eRecipe()}
    if has_se:
        pt2e_recipes["PT2E per-channel, SE in float"] = Pt2eRecipe(keep_float=("se",))
    for name, recipe in pt2e_recipes.items():
        converted = quantize_pt2e(model, calibration, recipe)
        files[name] = save_pt2e(converted, work / f"{label}.{len(files)}.int8.pt2", shape)
        runners[name] = lower_for_cpu(converted, name)
        print(f"{label}: {name} done", flush=True)
    if args.qat_epochs > 0:
        keep_float = tuple(group for group in args.qat_keep_float.split(",") if group)
        name = f"PT2E QAT ({args.qat_epochs} epoch(s), {args.qat_images} images" + \
            (f", {'+'.join(keep_float)} in float)" if keep_float else ")")
        loader = unlabelled_loader(data / "train", model.preprocessing, batch_size=32)
        batches = list(islice(iter(loader), max(1, args.qat_images // 32)))
        started = time.perf_counter()
        converted = quantize_aware_train(model, batches, QatSettings(epochs=args.qat_epochs, lr=args.qat_lr),
                                         Pt2eRecipe(keep_float=keep_float))
        files[name] = save_pt2e(converted, work / f"{label}.qat.int8.pt2", shape)
        runners[name] = lower_for_cpu(converted, name)
        print(f"{label}: QAT trained in {time.perf_counter() - started:.0f} s", flush=True)
    loader = labelled_loader(data / "val", model.preprocessing, model.class_names, batch_size=50)
    accuracy = evaluate_runners(runners, loader, reference="ORT fp32 (reference)")
    reference = accuracy["ORT fp32 (reference)"].top1
    speeds = measure_speeds(runners, shape, throughput_batch=8, max_seconds=3.0)  # timed in turns
    rows = []
    for name in runners:
        result = accuracy[name]
        latency = speeds[name].latency.median_ms
        rows.append([label, name, f"{file_size(files[name]) / 1e6:.2f}", f"{latency:.2f}",
                     f"{100 * result.top1:.2f}", f"{100 * (reference - result.top1):+.2f}",
                     f"{100 * result.agreement:.2f}",
                     f"{result.sqnr_db:.1f}" if math.isfinite(result.sqnr_db) else "-"])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--b0", help="B0 checkpoint trained on the demo digits")
    parser.add_argument("--lite0", help="Lite0 checkpoint fine-tuned on the demo digits")
    parser.add_argument("--v2-b0", help="EfficientNetV2-B0 checkpoint trained on the demo digits")
    parser.add_argument("--data", required=True, type=Path, help="the demo dataset folder (train/ and val/)")
    parser.add_argument("--calib-images", type=int, default=256)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-images", type=int, default=2000)
    parser.add_argument("--qat-lr", type=float, default=QatSettings.lr)
    parser.add_argument("--qat-keep-float", default="", help="layer groups QAT leaves in float, e.g. stem")
    parser.add_argument("--entropy", action="store_true", help="also calibrate by entropy (slow)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    checkpoints = {label: path for label, path in (("Lite0", args.lite0), ("B0", args.b0), ("V2-B0", args.v2_b0))
                   if path}
    if not checkpoints:
        parser.error("give one or more of --lite0 CKPT, --b0 CKPT, --v2-b0 CKPT")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="effnet-int8-") as work:
        for label, checkpoint in checkpoints.items():
            rows += benchmark(label, checkpoint, args.data, args, Path(work))
    print()
    print(format_table(["model", "variant", "MB", "b1 ms", "top-1 %", "drop pts", "agree %", "SQNR dB"], rows))
    lite0 = [r for r in rows if r[0] == "Lite0" and "reference" not in r[1]]
    if lite0:
        best = max(lite0, key=lambda r: (float(r[6]), -float(r[5])))
        met = float(best[5]) <= AIM_DROP and float(best[6]) >= 100 * AIM_AGREEMENT
        print(f"\nLite0 best INT8: {best[1]}: drop {best[5]} points, agreement {best[6]}% "
              f"(aim: drop <= {AIM_DROP}, agreement >= {100 * AIM_AGREEMENT:.0f}%: {'met' if met else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
