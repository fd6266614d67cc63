"""``effnet bench``: params, MACs, latency, throughput and peak memory measured here, beside
the published top-1, for our networks and the usual peers."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

from ..bench.measure import TimingBudget
from ..bench.peers import DEFAULT_MODELS, resolve
from ..bench.report import format_rows, output_folder, write_report
from ..bench.runner import DTYPES, BenchSettings, OursRunner, run_bench
from ..cpu_path import CPU_PATHS, build_cpu_path, choose_cpu_path
from ..errors import ExitCode
from . import add_command, numbers


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r} (nothing to measure)")
    return names


MAX_CALLS = 1_000_000
"""The most timed or warm-up calls a run may ask for."""
MAX_SECONDS = 86_400.0
"""The longest a run may be timed (a day)."""


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(numbers.BATCH(b) for b in _names(text))
    except argparse.ArgumentTypeError:
        sizes = ()
    if not sizes:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers up to {numbers.MAX_BATCH:,} "
                                         f"separated by commas, got {text[:60]!r}")
    return sizes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "bench",
        description="Measure each network at each batch size (random weights: nothing is downloaded), "
                    "print a table and write bench.csv, bench.md and accuracy plots to --out.")
    parser.add_argument("--models", type=_names, default=list(DEFAULT_MODELS),
                        help="comma-separated names: ours (efficientnet_b0), torchvision's (resnet50) or "
                             f"SOURCE:NAME with SOURCE torchvision or timm (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--batch", type=_batch_sizes, default=(1, 32), help="batch sizes (default 1,32)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="fp32, or bf16/fp16 under autocast (default fp32)")
    parser.add_argument("--channels-last", action="store_true", help="run in the channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile each network (compile time "
                        "is spent in warm-up, not timed)")
    parser.add_argument("--fast", action="store_true",
                        help="also time each of our networks through the fast inference path (BatchNorm folded, "
                             "fused kernels, CUDA graphs on CUDA, weights in --dtype; with --compile, compiled around "
                             "the kernels; not yet measured on a GPU): rows of source effnet-fast")
    parser.add_argument("--cpu-path", choices=list(CPU_PATHS), default=None,
                        help="on the CPU, in fp32 without --compile, time our networks through this path instead of "
                             "the one a Classifier takes by default (measured fastest on this machine, or "
                             "$EFFNET_CPU_PATH); the rows name the path")
    parser.add_argument("--resolution", type=numbers.IMAGE_SIZE, default=None,
                        help="input size for every network instead of each one's native size")
    parser.add_argument("--iterations", type=numbers.whole(1, MAX_CALLS), default=30,
                        help="timed calls per run at most (default 30)")
    parser.add_argument("--min-iterations", type=numbers.whole(1, MAX_CALLS), default=3,
                        help="timed calls per run at least (default 3)")
    parser.add_argument("--max-seconds", type=numbers.real(0.0, MAX_SECONDS, low_open=True), default=10.0,
                        help="stop timing a run after this long, once --min-iterations are done (default 10)")
    parser.add_argument("--warmup", type=numbers.whole(0, MAX_CALLS), default=3,
                        help="warm-up calls at most (default 3)")
    parser.add_argument("--out", default="runs/bench", help="folder for bench.csv, bench.md and the plots "
                        "(default runs/bench)")
    parser.set_defaults(func=run)


def default_path(pinned: str | None) -> OursRunner:
    """Our networks as a Classifier runs them on the CPU by default: through the path chosen for
    this machine (:func:`effnet.cpu_path.choose_cpu_path`), or ``pinned``."""

    def run_ours(network: nn.Module) -> tuple[str, Callable[[torch.Tensor], object]]:
        path = choose_cpu_path(network, pinned).path
        return path, build_cpu_path(network, path)

    return run_ours


def run(args: argparse.Namespace) -> int:
    models = [resolve(name) for name in args.models]
    timing = TimingBudget(args.warmup, args.iterations, args.min_iterations, args.max_seconds)
    settings = BenchSettings(args.device, args.batch, args.dtype, args.channels_last, args.compile,
                             args.resolution, timing, args.fast, default_path(args.cpu_path))
    out_dir = output_folder(args.out)
    rows = run_bench(models, settings, progress=True)
    print(format_rows(rows))
    for path in write_report(rows, out_dir):
        print(f"wrote {path}")
    return ExitCode.PARTLY_DONE if any(row.status.startswith("error") for row in rows) else ExitCode.OK
