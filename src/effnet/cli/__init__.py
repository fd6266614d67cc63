"""The ``effnet`` command: a thin layer of argument parsing over the library.

Each command lives in its own module with ``register(subparsers)``, which adds its parser (with
:func:`add_command`) and sets ``func`` to the function that runs it. Only the module of the
command being run is imported, so ``effnet --help`` and ``effnet --version`` answer without
loading PyTorch. :func:`main` turns every error into one line on stderr and an exit code of
:class:`~effnet.errors.ExitCode`: an :class:`~effnet.errors.EffnetError` its ``exit_code``, other
``ValueError``/``OSError`` 2, an interruption (SIGINT, or SIGTERM, which runs the same clean-up
so outputs are closed whole) 130, and anything else 70 as an internal error (the traceback is
printed only with ``EFFNET_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from importlib import metadata
from typing import Any, NamedTuple

from ..errors import EffnetError, ExitCode


class Command(NamedTuple):
    """A command's one-line summary (``effnet --help``) and an example of its use."""

    summary: str
    example: str


COMMANDS: dict[str, Command] = {
    "models": Command("list the models with params, GMACs and resolution", "effnet models --filter lite"),
    "scale": Command("the network the compound-scaling formula gives for phi", "effnet scale --phi 2.5"),
    "data": Command("datasets: write the demo digits, inspect a data folder",
                    "effnet data demo digits/ && effnet data info digits/"),
    "bench": Command("measure params, MACs, latency, throughput and memory on this machine",
                     "effnet bench --models efficientnet_b0,timm:efficientnet_b0 --batch 1,8"),
    "train": Command("train a model on an image folder (resumable; DDP under torchrun)",
                     "effnet train --data digits/ --model efficientnet_b0 --recipe seed --epochs 10 --out runs/b0"),
    "finetune": Command("fine-tune a pretrained model or a trained run on an image folder",
                        "effnet finetune --from efficientnet_lite0 --data digits/ --strategy linear --epochs 5"),
    "eval": Command("evaluate a checkpoint on an image folder (top-1/5, per class, confusion matrix)",
                    "effnet eval --checkpoint runs/b0/model.safetensors --data digits/ --out runs/b0/eval"),
    "demo": Command("the main job: demo digits -> train -> evaluate (a few minutes on 2 CPU cores)",
                    "effnet demo --pretrained --model efficientnet_lite0"),
    "predict": Command("classify image files, folders and globs (top-k classes as a table, CSV or JSON)",
                       "effnet predict cat.jpg photos/ --model efficientnet_lite0 --format json --out preds.json"),
    "export": Command("export a checkpoint to ONNX, TorchScript or torch.export (.pt2), verified in its runtime",
                      "effnet export --checkpoint runs/b0/model.safetensors --format onnx --fold-bn"),
    "quantize": Command("INT8 quantization (ONNX Runtime or PT2E, PTQ or QAT) with its accuracy cost measured",
                        "effnet quantize --checkpoint runs/lite0 --calib digits/train --eval digits/val"),
    "serve": Command("serve a classifier over HTTP: POST /v1/predict, a web page at /, /metrics, /healthz",
                     "effnet serve --model efficientnet_lite0 --port 8000"),
    "ship": Command("turn a checkpoint into a verified deployment folder (model, predict.py, report)",
                    "effnet ship --checkpoint runs/lite0 --target onnxruntime-int8 --calib digits/train "
                    "--eval digits/val --out ship/"),
    "pick": Command("measure variants x runtimes here and pick the most accurate within a latency budget",
                    "effnet pick --max-latency-ms 10 --out runs/pick"),
}
"""Every command by name, in ``effnet --help``'s order: its summary and an example."""
RUNTIME_PACKAGES = ("effnet-runtime", "torch", "torchvision", "onnxruntime", "openvino", "timm", "executorch",
                    "ai-edge-litert", "ray", "tritonclient")
"""Packages whose versions ``effnet --version`` lists when they are installed."""


def add_command(subparsers: argparse._SubParsersAction, name: str, **options: Any) -> argparse.ArgumentParser:
    """The parser of command ``name`` with its summary and example (from :data:`COMMANDS`)."""
    command = COMMANDS[name]
    return subparsers.add_parser(name, help=command.summary, epilog=f"example:\n  {command.example}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, **options)


def add_follow_links(parser: argparse.ArgumentParser) -> None:
    """``--follow-links``: follow links in data folders that lead out of them (skipped otherwise)."""
    parser.add_argument("--follow-links", action="store_true", default=None,
                        help="follow links in image folders that lead outside them (skipped, with a warning, "
                             "by default: a link to / would read every image on the machine)")


def versions() -> str:
    """effnet's version and those of the installed runtimes, read from package metadata (nothing is
    imported)."""
    lines = [f"effnet {metadata.version('effnet')}", f"python {sys.version.split()[0]}"]
    for package in RUNTIME_PACKAGES:
        try:
            lines.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines)


class _Versions(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print effnet's version and its runtimes' and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(versions())
        parser.exit()


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``effnet`` parser. Given ``argv``, only the command named there is loaded in full; the
    others are listed by name and summary (their modules, and PyTorch, are not imported)."""
    parser = argparse.ArgumentParser(
        prog="effnet", description="EfficientNet models, training, inference, deployment and benchmarks.",
        epilog="exit codes:\n" + "".join(f"  {int(code):<4} {code.meaning}\n" for code in ExitCode) +
               "example:\n  effnet predict cat.jpg --model efficientnet_lite0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Versions)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None if argv is None else next((arg for arg in argv if not arg.startswith("-")), None)
    for name, command in COMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(f"effnet.cli.{name}").register(subparsers)
        else:
            subparsers.add_parser(name, help=command.summary)
    return parser


def one_line(error: BaseException) -> str:
    """The error's message on one line (multi-line messages, such as PyTorch's, joined by "; ")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C, so ``finally`` blocks close files whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv  # the command as typed, for reports
    prefix = f"effnet {args.command}"
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or ExitCode.OK)
    except EffnetError as error:
        print(f"{prefix}: error: {one_line(error)}", file=sys.stderr)
        return error.exit_code
    except (ValueError, OSError) as error:
        print(f"{prefix}: error: {one_line(error)}", file=sys.stderr)
        return ExitCode.REFUSED
    except KeyboardInterrupt as interrupt:
        print(f"{prefix}: interrupted{f' ({interrupt})' if str(interrupt) else ''}", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as error:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("EFFNET_DEBUG"):
            raise
        print(f"{prefix}: internal error: {type(error).__name__}: {one_line(error)} (please report it; "
              "EFFNET_DEBUG=1 shows the traceback)", file=sys.stderr)
        return ExitCode.INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
