"""``effnet export``: a checkpoint to ONNX, TorchScript or torch.export, verified in its runtime."""

from __future__ import annotations

import argparse

from ..deploy.export import DEFAULT_OPSET, check_export_options, export_model
from ..deploy.pipeline import default_output, load_deployable
from ..deploy.runtime import FORMATS, SUFFIXES
from ..deploy.verify import FP32_TOLERANCE
from ..files import check_output_file
from . import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "export",
        description="Export a model and check it: the file is loaded back in its own runtime (ONNX Runtime, "
                    "torch.jit.load, torch.export.load) and compared with eager PyTorch on several batch sizes. "
                    "If the logits differ by more than the tolerance, nothing is written.")
    parser.add_argument("--checkpoint", required=True,
                        help="an effnet .safetensors, a training run's .pt or folder, or a model name "
                             "(its pretrained weights)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the convolutions first")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; 13-17 use the legacy TorchScript-based exporter)")
    parser.add_argument("--out", default=None,
                        help="output file (default: beside the checkpoint, "
                             + ", ".join(f"{s} for {f}" for f, s in SUFFIXES.items()) + ")")
    parser.add_argument("--tolerance", type=float, default=FP32_TOLERANCE,
                        help=f"largest |difference| of the logits accepted (default {FP32_TOLERANCE:g})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_export_options(args.format, args.opset, args.tolerance)
    out = check_output_file(args.out or default_output(args.checkpoint, SUFFIXES[args.format]),
                            (SUFFIXES[args.format],))
    model = load_deployable(args.checkpoint)
    result = export_model(model, out, args.format, opset=args.opset, fold_bn=args.fold_bn, tolerance=args.tolerance)
    print(result.describe())
    return 0
