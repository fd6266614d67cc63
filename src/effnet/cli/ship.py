"""``effnet ship``: a checkpoint to a verified, self-contained deployment folder."""

from __future__ import annotations

import argparse
import logging
import shlex

from ..deploy.calibration import DEFAULT_CALIBRATION_IMAGES
from ..deploy.quantize import LAYER_GROUPS, QatSettings
from ..ship.plan import CHANCE_MARGIN, DEFAULT_MIN_AGREEMENT, REMEDIES, TARGETS
from . import add_command, numbers


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "ship",
        description="Fold BatchNorm, export, quantize where asked, verify (top-1 on --eval against fp32, "
                    "agreement, logit SQNR), benchmark, and write one folder: the model file, manifest.json, "
                    "labels.json, preprocessing.json, a standalone predict.py (only the runtime, numpy and "
                    "Pillow) and report.md/report.html. Nothing is written if the shipped model loses more than "
                    "--max-drop top-1 points, changes more answers than --min-agreement allows, or (like the fp32 "
                    "model) is no better than chance plus 5 points.")
    parser.add_argument("--checkpoint", required=True,
                        help="an effnet .safetensors, a training run's .pt or folder, or a model name")
    parser.add_argument("--target", required=True, choices=list(TARGETS), help="runtime and precision to ship")
    parser.add_argument("--calib", default=None, help="folder of calibration images (INT8 targets and remedies)")
    parser.add_argument("--eval", required=True, help="class-folder dataset the accuracy is measured on")
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument("--max-drop", type=numbers.real(0.0, 100.0), default=1.0,
                        help="largest loss of top-1 points against fp32 that may be shipped (default 1.0)")
    parser.add_argument("--min-agreement", type=numbers.real(0.0, 100.0), default=DEFAULT_MIN_AGREEMENT,
                        help="least share of the evaluation images (%%) on which the shipped model must answer as fp32 "
                             f"does (default {DEFAULT_MIN_AGREEMENT:g})")
    parser.add_argument("--min-top1", type=numbers.real(0.0, 100.0), default=None,
                        help="least top-1 (%%) on --eval that may ship, for the fp32 model too (default: chance, "
                             f"100/classes, plus {CHANCE_MARGIN:g} points; 0 ships a model at chance level)")
    parser.add_argument("--auto-remedy", action="store_true",
                        help="if the target loses too much, try in order: " + ", ".join(REMEDIES)
                             + "; ship the first that passes the gate")
    parser.add_argument("--remedies", default=",".join(REMEDIES),
                        help=f"the remedies --auto-remedy may try, in order (default {','.join(REMEDIES)})")
    parser.add_argument("--keep-float", default="",
                        help=f"comma-separated layer groups left in float in INT8: {', '.join(LAYER_GROUPS)}")
    parser.add_argument("--calib-images", type=numbers.IMAGES, default=DEFAULT_CALIBRATION_IMAGES,
                        help=f"calibration images taken evenly from --calib (default {DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--qat-epochs", type=numbers.EPOCHS, default=QatSettings.epochs,
                        help="epochs of the QAT remedy")
    parser.add_argument("--batch-size", type=numbers.BATCH, default=32, help="evaluation batch size")
    parser.add_argument("--threads", type=numbers.THREADS, default=None,
                        help="CPU threads of the runtimes (default: all)")
    parser.add_argument("--no-speed", action="store_true", help="skip the latency and throughput measurements")
    parser.set_defaults(func=run)


def _names(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def run(args: argparse.Namespace) -> int:
    from ..deploy.pipeline import load_deployable
    from ..ship import ShipOptions, ship

    progress = logging.getLogger("effnet")
    if not progress.handlers:
        progress.addHandler(logging.StreamHandler())
        progress.setLevel(logging.INFO)
        progress.propagate = False  # a root handler set up by a runtime would print every line twice
    options = ShipOptions(
        target=args.target, max_drop=args.max_drop, min_agreement=args.min_agreement, min_top1=args.min_top1,
        auto_remedy=args.auto_remedy, remedies=_names(args.remedies),
        keep_float=_names(args.keep_float), calibration_images=args.calib_images,
        qat=QatSettings(epochs=args.qat_epochs), batch_size=args.batch_size, threads=args.threads,
        measure_speed=not args.no_speed, command=shlex.join(["effnet", *args.argv]))
    result = ship(load_deployable(args.checkpoint), args.calib, args.eval, args.out, options)
    for attempt in result.attempts[:-1]:
        print(f"not shipped: {attempt.recipe.describe()}: {'; '.join(attempt.problems)}")
    print(result.describe())
    return 0
