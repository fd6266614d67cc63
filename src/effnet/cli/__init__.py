"""The ``effnet`` command: a thin layer of argument parsing over the library.

Each command lives in its own module with ``register(subparsers)``, which adds its parser
and sets ``func`` to the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import EffnetError

COMMANDS = ("models", "scale", "data", "bench", "train", "finetune", "eval", "demo", "predict", "export", "quantize",
            "ship", "pick")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effnet", description="EfficientNet models, training, inference, "
                                     "deployment and benchmarks.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"effnet.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed, for reports
    try:
        return int(args.func(args) or 0)
    except EffnetError as error:
        print(f"effnet {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except (ValueError, OSError) as error:
        print(f"effnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"effnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
