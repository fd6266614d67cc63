"""``effnet serve``: an HTTP service for a classifier (dynamic batching, metrics, a web page)."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from ..errors import ConfigError
from ..serve import RUNTIMES, ModelSource, ServeOptions
from . import add_command

MAX_PORT = 65535

API_KEY_VARIABLE = "EFFNET_API_KEY"
DEFAULTS = {field.name: field.default for field in fields(ServeOptions)}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "serve",
        description="Serve a model over HTTP with uvicorn. Requests arriving together run as one batch (up to "
                    "--max-batch images, waiting at most --max-wait-ms for them). Images are prepared with the "
                    "model's own preprocessing, as effnet predict does. SIGTERM stops taking requests and answers "
                    "the ones in flight before exiting.")
    source = parser.add_argument_group("model (one of)")
    source.add_argument("--model", help="a registry name (its pretrained weights), or the architecture of "
                                        "another library's --checkpoint file")
    source.add_argument("--checkpoint", help="an effnet .safetensors, a run's .pt or run directory")
    source.add_argument("--artifact", help="a shipped folder (manifest.json, labels.json, preprocessing.json and "
                                           "the model file), run in the runtime it was shipped for")
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="torch (default for --model/--checkpoint; exported at start-up for the others), "
                             "onnxruntime, openvino or torchscript")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda ... (torch runtime)")
    parser.add_argument("--threads", type=int, help="compute threads per process (default: PyTorch's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                                                            "0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port, each with its own "
                                                               "copy of the model (default 1)")
    limits = parser.add_argument_group("batching and limits")
    for name, help_text in (("max_batch", "images per model call"),
                            ("max_wait_ms", "longest wait for a batch to fill, in ms"),
                            ("max_queue", "images that may wait; more are answered 503 with Retry-After"),
                            ("max_files", "images per request"),
                            ("max_upload_mb", "request body size, in MB"),
                            ("max_pixels", "pixels per image (decompression bombs)"),
                            ("decode_threads", "threads decoding and preparing uploads")):
        limits.add_argument("--" + name.replace("_", "-"), type=type(DEFAULTS[name]), default=DEFAULTS[name],
                            help=f"{help_text} (default {DEFAULTS[name]})")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE),
                        help=f"require this key on /v1/* (X-API-Key or Authorization: Bearer); default: "
                             f"${API_KEY_VARIABLE}, which keeps it out of the process list")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= MAX_PORT:
        raise ConfigError(f"--port must be from 0 to {MAX_PORT} (0: any free port), got {args.port}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    try:
        from ..serve.server import serve
    except ImportError as error:
        raise ConfigError(f"effnet serve needs the serve extra ({error}): pip install 'effnet[serve]'") from None
    source = ModelSource(args.model, args.checkpoint, args.artifact, args.runtime, args.device, args.threads)
    options = ServeOptions(**{name: getattr(args, name) for name in DEFAULTS})
    serve(source, options, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    return 0
