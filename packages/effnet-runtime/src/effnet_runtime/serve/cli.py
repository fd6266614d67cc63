"""The command line: the arguments ``effnet-serve`` and ``effnet serve`` share
(:func:`add_server_arguments`), and ``effnet-serve`` itself, the server of shipped folders that
runs without PyTorch.

Examples::

    effnet-serve --artifact shipped/lite0-int8 --port 8000 --grpc-port 8001
    effnet-serve --repository models/ --version-policy latest:2

Every number is checked against :data:`~effnet_runtime.serve.settings.NUMBERS` as it is parsed,
so ``--max-wait-ms inf`` is refused with a message naming the option. Exit codes: 0 after a
graceful stop, 2 for anything refused (bad settings, a port in use, a model that cannot be
loaded), 70 for an internal error (effnet's exit codes).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import fields

from .predictor import Loader
from .server import ModelSource, Settings, serve
from .settings import LOG_LEVELS, NUMBERS, Listen, ServeOptions

API_KEY_VARIABLE = "EFFNET_API_KEY"
EXIT_REFUSED = 2
EXIT_INTERNAL_ERROR = 70
DEFAULT_OPTIONS = {item.name: item.default for item in fields(ServeOptions)}
LIMIT_HELP = {"max_batch": "images per model call",
              "max_wait_ms": "longest wait for a batch to fill, in ms",
              "max_queue": "images that may wait per model version; more are answered 503 with Retry-After",
              "max_files": "images per request",
              "max_upload_mb": "request body (and gRPC message) size, in MB",
              "max_pixels": "pixels per image, before and after resizing (decompression bombs, too thin images)",
              "decode_threads": "threads decoding and preparing images"}


def number(name: str) -> Callable[[str], int | float]:
    """The argparse type of numeric setting ``name``: parsed and checked against its bound."""

    def parse(text: str) -> int | float:
        try:
            return NUMBERS[name].parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The repository, listening, limit and access arguments of a server."""
    repository = parser.add_argument_group("model repository")
    repository.add_argument("--repository", metavar="DIR",
                            help="serve every model of DIR/<model name>/<version number>/ (each version folder "
                                 "a shipped folder, or a checkpoint model.safetensors for effnet serve)")
    repository.add_argument("--version-policy", default="latest:1",
                            help="versions served per model: latest, latest:N, all, specific:1,3 (default latest:1)")
    repository.add_argument("--poll-s", type=number("poll_s"), default=5.0,
                            help="look for new, changed or removed versions every this many seconds; 0: only on "
                                 "POST /v2/repository/models/NAME/load (default 5)")
    listening = parser.add_argument_group("listening")
    listening.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine "
                                                               "only; 0.0.0.0 for every interface)")
    listening.add_argument("--port", type=number("port"), default=8000, help="HTTP port (default 8000; 0: any free)")
    listening.add_argument("--grpc-port", type=number("grpc_port"),
                           help="also answer the Open Inference Protocol over gRPC on this port (grpc extra)")
    listening.add_argument("--workers", type=number("workers"), default=1,
                           help="processes sharing the HTTP port, each with its own copy of the model; one model "
                                "over HTTP only: a repository and gRPC run in one process (default 1)")
    listening.add_argument("--threads", type=number("threads"), help="compute threads of each model (default: the "
                                                                     "runtime's)")
    limits = parser.add_argument_group("batching and limits")
    for name, help_text in LIMIT_HELP.items():
        default = DEFAULT_OPTIONS[name]
        limits.add_argument("--" + name.replace("_", "-"), type=number(name), default=default,
                            help=f"{help_text} (default {default})")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE),
                        help=f"require this key on /v1, /v2 and gRPC (X-API-Key, or Authorization: Bearer; gRPC "
                             f"metadata x-api-key); default: ${API_KEY_VARIABLE}, which keeps it out of the process "
                             "list")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)


def server_settings(args: argparse.Namespace, loader: Loader) -> Settings:
    """The :class:`~effnet_runtime.serve.server.Settings` of parsed arguments, the model coming from ``loader``."""
    source = ModelSource(loader, args.repository, args.version_policy, args.poll_s)
    options = ServeOptions(**{name: getattr(args, name) for name in DEFAULT_OPTIONS})
    listen = Listen(args.host, args.port, args.grpc_port, args.workers, args.log_level)
    return Settings(source, options, listen)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="effnet-serve",
        description="Serve folders written by effnet ship (ONNX Runtime, OpenVINO) without PyTorch: effnet's "
                    "/v1 API and page, and the Open Inference Protocol (KServe v2) over HTTP and gRPC.",
        epilog="example:\n  effnet-serve --artifact shipped/lite0-int8 --port 8000 --grpc-port 8001",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", metavar="FOLDER", help="one shipped folder (or give --repository)")
    add_server_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.artifact is None) == (args.repository is None):
        parser.error("give one of --artifact FOLDER (a shipped folder) or --repository DIR")
    try:
        arguments = {"threads": args.threads} if args.repository else {"folder": args.artifact, "threads": args.threads}
        serve(server_settings(args, Loader("effnet_runtime.serve.predictor:load_shipped", arguments)))
    except (ValueError, OSError) as error:
        print(f"effnet-serve: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as error:  # a bug: still one line
        print(f"effnet-serve: internal error: {type(error).__name__}: {error} (please report it)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
