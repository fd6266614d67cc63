"""The ``effnet`` command: a thin layer of argument parsing over the library.

Each command lives in its own module with ``register(subparsers)``, which adds its parser
and sets ``func`` to the function that runs it. :func:`main` turns every error into one line
on stderr and an exit code: an :class:`~effnet.errors.EffnetError` its ``exit_code``, other
``ValueError``/``OSError`` 2, an interruption (SIGINT, or SIGTERM, which runs the same clean-up
so outputs are closed whole) 130, and anything else 1 as an internal error (the traceback is
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
from typing import Any

from ..errors import EffnetError

COMMANDS = ("models", "scale", "data", "bench", "train", "finetune", "eval", "demo", "predict", "export", "quantize",
            "serve", "ship", "pick")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effnet", description="EfficientNet models, training, inference, "
                                     "deployment and benchmarks.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"effnet.cli.{name}").register(subparsers)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed, for reports
    prefix = f"effnet {args.command}"
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except EffnetError as error:
        print(f"{prefix}: error: {one_line(error)}", file=sys.stderr)
        return error.exit_code
    except (ValueError, OSError) as error:
        print(f"{prefix}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"{prefix}: interrupted{f' ({interrupt})' if str(interrupt) else ''}", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("EFFNET_DEBUG"):
            raise
        print(f"{prefix}: internal error: {type(error).__name__}: {one_line(error)} (please report it; "
              "EFFNET_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
