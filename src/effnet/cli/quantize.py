"""``effnet quantize``: INT8 by ONNX Runtime PTQ, PT2E PTQ or QAT, compared with fp32 in a table."""

from __future__ import annotations

import argparse
import logging
from pathlib import PurePath

from ..deploy.calibration import DEFAULT_CALIBRATION_IMAGES
from ..deploy.pipeline import INT8_SUFFIXES, QUANT_METHODS, QuantizeOptions, default_output, load_deployable
from ..deploy.quantize import ACTIVATION_TYPES, CALIBRATION_METHODS, LAYER_GROUPS, OrtRecipe, Pt2eRecipe, QatSettings
from ..files import check_output_file
from . import add_command, numbers


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "quantize",
        description="Quantize a checkpoint to INT8 with images from --calib and print fp32 against INT8: file "
                    "size, batch-1 latency, batch-32 throughput, top-1 on --eval, agreement with fp32 and "
                    "logit SQNR.")
    parser.add_argument("--checkpoint", required=True,
                        help="an effnet .safetensors, a training run's .pt or folder, or a model name")
    parser.add_argument("--calib", required=True,
                        help="folder of calibration images (any layout; for qat, the images trained on)")
    parser.add_argument("--eval", required=True, help="class-folder dataset to measure top-1 and agreement on")
    parser.add_argument("--method", choices=QUANT_METHODS, default="ort-ptq",
                        help="ort-ptq: ONNX Runtime static QDQ (default, the CPU deployment path); pt2e-ptq: "
                             "torchao PT2E with the X86 Inductor quantizer; qat: PT2E quantization-aware training")
    parser.add_argument("--out", default=None,
                        help="INT8 file, .onnx (run by ONNX Runtime) or .pt2 (PT2E methods, run on oneDNN); "
                             "default: beside the checkpoint, "
                        + ", ".join(f"{s} for {m}" for m, s in INT8_SUFFIXES.items()))
    parser.add_argument("--calib-images", type=numbers.IMAGES, default=DEFAULT_CALIBRATION_IMAGES,
                        help=f"calibration images taken evenly from --calib (default {DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--keep-float", default="",
                        help=f"comma-separated layer groups left in float: {', '.join(LAYER_GROUPS)} "
                             "(activations: ort-ptq only)")
    parser.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                        help="7-bit ranges, which x86 CPUs without VNNI need (their u8s8 kernels saturate in "
                             "int16); default: on exactly when this CPU lacks VNNI")
    ort = parser.add_argument_group("ort-ptq")
    ort.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    ort.add_argument("--calibrate-method", choices=CALIBRATION_METHODS, default="minmax",
                     help="activation ranges: observed min/max (default), entropy or percentile")
    ort.add_argument("--activation-type", choices=ACTIVATION_TYPES, default="uint8",
                     help="uint8 asymmetric (default, fast on x86) or int8 symmetric")
    qat = parser.add_argument_group("qat")
    qat.add_argument("--epochs", type=numbers.EPOCHS, default=QatSettings.epochs, help="QAT epochs over --calib")
    qat.add_argument("--lr", type=numbers.LEARNING_RATE, default=QatSettings.lr,
                     help="QAT learning rate (SGD with momentum)")
    parser.add_argument("--batch-size", type=numbers.BATCH, default=32, help="batch size for evaluation and QAT")
    parser.add_argument("--threads", type=numbers.THREADS, default=None,
                        help="CPU threads for ONNX Runtime and PyTorch")
    parser.add_argument("--no-speed", action="store_true", help="skip the latency and throughput measurements")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..deploy.pipeline import quantize_checkpoint

    progress = logging.getLogger("effnet")
    if not progress.handlers:
        progress.addHandler(logging.StreamHandler())
        progress.setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_float = tuple(group.strip() for group in args.keep_float.split(",") if group.strip())
    options = QuantizeOptions(
        method=args.method, calibration_images=args.calib_images,
        ort=OrtRecipe(per_channel=not args.per_tensor, reduce_range=args.reduce_range,
                      calibrate_method=args.calibrate_method, activation_type=args.activation_type,
                      keep_float=keep_float),
        pt2e=Pt2eRecipe(reduce_range=args.reduce_range, keep_float=() if args.method == "ort-ptq" else keep_float),
        qat=QatSettings(epochs=args.epochs, lr=args.lr),
        batch_size=args.batch_size, threads=args.threads, measure_speed=not args.no_speed)
    out = check_output_file(args.out or default_output(args.checkpoint, INT8_SUFFIXES[args.method]),
                            (PurePath(INT8_SUFFIXES[args.method]).suffix,))
    model = load_deployable(args.checkpoint)
    report = quantize_checkpoint(model, args.calib, args.eval, out, options)
    print(report.table())
    print(f"wrote {report.int8_path}")
    return 0
