"""``effnet pick``: the most accurate variant, runtime and precision within a budget on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ExitCode
from ..pick.search import DEFAULT_FAMILIES, DEFAULT_RUNTIMES, FAMILIES, RUNTIMES
from . import add_command, numbers

# The largest values pick's budgets and --max-seconds take: beyond them a budget means nothing.
MAX_MEASURE_SECONDS = 3600.0
MAX_LATENCY_MS = 3_600_000.0
MAX_RATIO = 10_000.0
MAX_MB = 1e9


def _names(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "pick",
        description="Measure every candidate (variant x runtime x precision) on this machine in interleaved rounds "
                    "with a reference (torchvision's B0 in ONNX Runtime fp32) until its spread is small, skipping "
                    "larger siblings of a variant surely over the budget and reusing cached measurements; print the "
                    "table with the Pareto front, the verdicts (fits, uncertain, over) and the pick, and write "
                    "pick.csv, pick.md, pick.json and pick.png to --out. Exits 3 when no candidate surely fits.")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-latency-ms", type=numbers.real(0.0, MAX_LATENCY_MS, low_open=True), default=None,
                        help="latency budget per batch (ms): a candidate fits when its p10-p90 is within it")
    budget.add_argument("--max-latency-ratio", type=numbers.real(0.0, MAX_RATIO, low_open=True), default=None,
                        help="latency budget relative to the reference timed alongside (1.0: as fast as torchvision's "
                             "B0 in ONNX Runtime fp32); holds better on a busy machine")
    parser.add_argument("--batch", type=numbers.BATCH, default=1, help="batch size (default 1)")
    parser.add_argument("--device", default="cpu", choices=["cpu"],
                        help="where to run (cpu; the ONNX Runtime and OpenVINO candidates are CPU runtimes)")
    parser.add_argument("--max-memory-mb", type=numbers.real(0.0, MAX_MB, low_open=True), default=None,
                        help="memory budget (growth of resident memory)")
    parser.add_argument("--max-file-mb", type=numbers.real(0.0, MAX_MB, low_open=True), default=None,
                        help="model file size budget")
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES),
                        help=f"families to consider: {', '.join(FAMILIES)} (default {','.join(DEFAULT_FAMILIES)})")
    parser.add_argument("--models", default=None, help="only these variants (comma-separated, smallest first)")
    parser.add_argument("--runtimes", default=",".join(DEFAULT_RUNTIMES),
                        help=f"runtimes: {', '.join(RUNTIMES)} (default {','.join(DEFAULT_RUNTIMES)})")
    parser.add_argument("--max-seconds", type=numbers.real(0.0, MAX_MEASURE_SECONDS, low_open=True), default=4.0,
                        help="cap on each measurement (default 4 s)")
    parser.add_argument("--threads", type=numbers.THREADS, default=None, help="runtime threads (default: all cores)")
    parser.add_argument("--resolution", type=numbers.IMAGE_SIZE, default=None,
                        help="input size for every variant instead of its own (quick runs)")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="a trained model to consider instead of the registry's variants (repeat for several; "
                             "smallest first); its top-1 is measured on --eval in every runtime")
    parser.add_argument("--eval", default=None, help="class-folder dataset to measure the checkpoints' top-1 on")
    parser.add_argument("--calib", default=None, help="calibration images for the checkpoints' INT8 candidates")
    parser.add_argument("--cache-dir", default=None, help="measurement cache (default: effnet's cache folder/pick)")
    parser.add_argument("--refresh", action="store_true", help="measure again instead of reading the cache")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="what to print: the table, or the whole result as JSON for scripts (default table)")
    parser.add_argument("--out", default=None, help="folder for pick.csv, pick.md, pick.json and pick.png")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..pick.report import format_result, result_record, write_outputs
    from ..pick.search import PickSettings, pick

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = PickSettings(
        max_latency_ms=args.max_latency_ms, max_latency_ratio=args.max_latency_ratio, batch=args.batch,
        max_memory_mb=args.max_memory_mb,
        max_file_mb=args.max_file_mb, families=_names(args.families),
        models=_names(args.models) if args.models else None, runtimes=_names(args.runtimes),
        max_seconds=args.max_seconds, threads=args.threads, resolution=args.resolution,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None, refresh=args.refresh,
        checkpoints=tuple(args.checkpoint), eval_dir=Path(args.eval) if args.eval else None,
        calib_dir=Path(args.calib) if args.calib else None)
    result = pick(settings, progress=lambda message: print(message, file=sys.stderr, flush=True))
    print(json.dumps(result_record(result), indent=1) if args.format == "json" else format_result(result))
    if args.out:
        for path in write_outputs(result, Path(args.out)):
            print(f"wrote {path}", file=sys.stderr if args.format == "json" else sys.stdout)
    return ExitCode.OK if result.pick is not None else ExitCode.NOTHING_FITS
