"""``effnet predict``: the top classes of image files, folders and globs, in this process or
(``--engine ray``) on Ray Data across cores and nodes."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings

from ..cpu_path import CPU_PATHS
from ..data.device_decode import DECODE_MODES
from ..device import AMP_DTYPES
from ..errors import ConfigError, ExitCode
from ..files import atomic_open, check_output_file
from ..infer import Prediction, load_classifier
from ..predict import FORMATS, collect_images, format_for, open_writer, predict_files
from ..predict.model_ref import ModelRef
from . import add_command, add_follow_links, numbers

PREFIX = "effnet predict: "
ENGINES = ("local", "ray")
LOCAL_ONLY = {"format": None, "workers": 0, "device": "auto", "decode": "auto", "amp": None, "fast": None,
              "tta": False, "follow_links": None, "cpu_path": None}
"""Options of the local engine, with their defaults (which the Ray engine takes)."""
RAY_ONLY = {"ray_address": None, "actors": None, "gpus_per_actor": 0.0, "resume": False, "path_column": "path",
            "rows_per_part": None}
"""Options of the Ray engine, with their defaults."""
OUTPUT_SUFFIXES = (".csv", ".json", ".txt", ".tsv", ".log", "")
"""Existing files ``--out`` may replace: text outputs, never a checkpoint or an image."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "predict",
        description="Classify images with a pretrained model (--model NAME), one of our checkpoints "
                    "(--checkpoint: an effnet .safetensors, a run's best.pt or a run directory), or another "
                    "library's weight file read as an architecture (--model NAME --checkpoint FILE). Folders "
                    "are searched recursively; globs are expanded here too. A file that cannot be read is "
                    "reported and the rest go on; the exit code is 1 if any failed. --engine ray runs the same on "
                    "Ray Data (pip install 'effnet[ray]'): a local Ray on this machine's cores, or a cluster "
                    "(--ray-address), into a folder of part files (--out) that --resume completes.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, folders or glob patterns; with --engine ray also CSV or Parquet files "
                             "listing paths or URIs (see --path-column)")
    parser.add_argument("--model", help="a model name (e.g. efficientnet_lite0): its default pretrained weights, "
                                        "or the architecture of --checkpoint")
    parser.add_argument("--checkpoint", help="effnet .safetensors, a run's .pt or run directory; with --model, "
                                             "any torchvision/timm/EfficientNet-PyTorch/Keras weight file")
    parser.add_argument("--num-classes", type=numbers.CLASSES,
                        help="classifier size of a --model --checkpoint weight file (default: as stored in "
                             "effnet files, else 1000)")
    parser.add_argument("--top-k", type=numbers.CLASSES, default=5, help="classes to list per image (default 5)")
    parser.add_argument("--format", choices=FORMATS, help="output format (default: from --out's suffix, else table)")
    parser.add_argument("--out", help="write the results to this file instead of the screen; with --engine ray a "
                                      "folder of Parquet parts (CSV or JSON Lines parts when its name ends in .csv "
                                      "or .jsonl)")
    parser.add_argument("--batch-size", type=numbers.BATCH, default=32)
    parser.add_argument("--workers", type=numbers.WORKERS, default=0,
                        help="processes reading images (default 0: this one)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--decode", choices=DECODE_MODES, default="auto",
                        help="where JPEG files are decoded: cpu, or gpu (the device, in batches; not yet measured "
                             "on a GPU); auto: cpu until it is")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), help="mixed-precision autocast")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                        help="--fast: the fast inference path (BatchNorm folded, fused kernels, CUDA graphs on CUDA; "
                             "not yet measured on a GPU), in --amp's precision; --no-fast: the plain model. Default: "
                             "on the CPU the path measured fastest on this machine (see --cpu-path), on CUDA the "
                             "plain model")
    parser.add_argument("--cpu-path", choices=list(CPU_PATHS), default=None,
                        help="pin how the model runs on the CPU instead of the path measured fastest on this machine "
                             "(also $EFFNET_CPU_PATH): " + "; ".join(f"{k}: {v}" for k, v in CPU_PATHS.items()))
    parser.add_argument("--tta", action="store_true", help="average each image with its horizontal mirror")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_follow_links(parser)
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this process (default); ray: Ray Data, one model per actor")
    ray = parser.add_argument_group("--engine ray")
    ray.add_argument("--ray-address", help="join a running cluster: auto (RAY_ADDRESS, or the `ray start --head` of "
                                           "this machine), HOST:PORT or ray://HOST:PORT (default: start a local "
                                           "Ray on this machine's cores)")
    ray.add_argument("--actors", type=numbers.whole(1, numbers.MAX_WORKERS),
                     help="model copies (default: one per CPU left beside the reading tasks, or one per GPU share)")
    ray.add_argument("--gpus-per-actor", type=numbers.real(0.0, 64.0), default=0.0,
                     help="GPUs per actor, e.g. 1 or 0.5 (default 0)")
    ray.add_argument("--resume", action="store_true",
                     help="add only the inputs missing from --out (after an interrupted or failed run)")
    ray.add_argument("--path-column", default="path", help="the column of paths in CSV/Parquet inputs (default path)")
    ray.add_argument("--rows-per-part", type=numbers.IMAGES, help="rows per output file (default 10,000)")
    parser.set_defaults(func=run)


def _report_failure(prediction: Prediction) -> None:
    print(f"{PREFIX}{prediction.source}: {prediction.error}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    _check_engine_options(args)
    if args.engine == "ray":
        return _run_on_ray(args)
    out = check_output_file(args.out, OUTPUT_SUFFIXES) if args.out else None
    images = collect_images(args.paths, follow_links=bool(args.follow_links))
    for argument, reason in images.problems:
        print(f"{PREFIX}{argument}: {reason}", file=sys.stderr)
    if not images.files:
        raise ConfigError("no images to classify (see the messages above)")
    output_format = format_for(args.out, args.format)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier = load_classifier(args.model, args.checkpoint, num_classes=args.num_classes,
                                     device=args.device, amp=args.amp, tta_flip=args.tta, decode=args.decode,
                                     fast=args.fast, cpu_path=args.cpu_path)
    for warning in caught:
        print(f"{PREFIX}warning: {warning.message}", file=sys.stderr)
    choice = classifier.cpu_path_choice
    if choice is not None and choice.how == "measured":
        print(f"{PREFIX}{choice.describe()}", file=sys.stderr)
    with atomic_open(out) if out else contextlib.nullcontext(sys.stdout) as stream:
        writer = open_writer(output_format, stream, classifier.model_name)
        try:
            summary = predict_files(classifier, images.files, writer, top_k=args.top_k, batch_size=args.batch_size,
                                    num_workers=args.workers, progress=False if args.no_progress else None,
                                    on_failure=_report_failure)
        finally:
            writer.close()
    if out:
        print(f"wrote {summary.succeeded} prediction(s) to {out}")
    if summary.failed or images.problems:
        if summary.failed:
            print(f"{PREFIX}{summary.describe()}", file=sys.stderr)
        return ExitCode.PARTLY_DONE
    return 0


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_engine_options(args: argparse.Namespace) -> None:
    """Refuse an option the chosen engine does not have."""
    others, engine = (LOCAL_ONLY, "ray") if args.engine == "ray" else (RAY_ONLY, "local")
    given = [_flag(dest) for dest, default in others.items() if getattr(args, dest) != default]
    if given:
        hint = "drop it (Parquet/CSV/JSONL come from --out's name; GPUs from --gpus-per-actor)" \
            if engine == "ray" else "add --engine ray"
        raise ConfigError(f"{', '.join(given)} do(es) not apply to --engine {engine}: {hint}")
    if engine == "local" and args.checkpoint and ModelRef(checkpoint=args.checkpoint).shipped:
        raise ConfigError(f"{args.checkpoint} is a shipped folder: run it with --engine ray, or with its own "
                          "predict.py")
    if engine == "ray" and not args.out:
        raise ConfigError("--engine ray writes a folder of part files: give it with --out (e.g. --out predictions/)")


def _run_on_ray(args: argparse.Namespace) -> int:
    from ..predict.ray_cluster import require_ray

    require_ray()
    from ..predict.ray_engine import predict_on_ray

    def report(message: str) -> None:
        print(f"{PREFIX}{message}", file=sys.stderr)

    summary = predict_on_ray(args.paths, args.out, model=args.model, checkpoint=args.checkpoint,
                             num_classes=args.num_classes, ray_address=args.ray_address, actors=args.actors,
                             gpus_per_actor=args.gpus_per_actor, batch_size=args.batch_size, top_k=args.top_k,
                             resume=args.resume, path_column=args.path_column, progress=not args.no_progress,
                             report=report, **({"rows_per_part": args.rows_per_part} if args.rows_per_part else {}))
    for path, error in summary.failures:
        report(f"{path}: {error}")
    if summary.failed > len(summary.failures):
        report(f"... and {summary.failed - len(summary.failures)} more failures (see the error column)")
    print(f"{summary.describe()} to {args.out}")
    return ExitCode.PARTLY_DONE if summary.failed or summary.unmatched else ExitCode.OK
