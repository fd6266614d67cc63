"""``effnet serve``: effnet's API, its page and the Open Inference Protocol for a classifier or a
repository of them (the server is :mod:`effnet_runtime.serve`; PyTorch models come from
:mod:`effnet.serve`)."""

from __future__ import annotations

import argparse

from effnet_runtime.serve.cli import add_server_arguments, server_settings
from effnet_runtime.serve.predictor import Loader
from effnet_runtime.serve.server import serve

from ..errors import ConfigError
from ..serve import RUNTIMES
from . import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "serve",
        description="Serve a model, or a repository of versioned models, over HTTP (effnet's /v1 API, a page at /, "
                    "and the Open Inference Protocol at /v2) and gRPC (--grpc-port). Requests arriving together run "
                    "as one batch (up to --max-batch images, waiting at most --max-wait-ms for them). Images are "
                    "prepared with the model's own preprocessing, as effnet predict does. SIGTERM stops taking "
                    "requests and answers the ones in flight before exiting.")
    source = parser.add_argument_group("model (one of, or --repository)")
    source.add_argument("--model", help="a registry name (its pretrained weights), or the architecture of "
                                        "another library's --checkpoint file")
    source.add_argument("--checkpoint", help="an effnet .safetensors, a run's .pt or run directory")
    source.add_argument("--artifact", help="a shipped folder (manifest.json, labels.json, preprocessing.json and "
                                           "the model file), run in the runtime it was shipped for")
    source.add_argument("--runtime", choices=RUNTIMES,
                        help="torch (default for --model/--checkpoint; exported at start-up for the others), "
                             "onnxruntime, openvino or torchscript")
    source.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda ... (torch runtime, "
                                                         "and the checkpoints of a repository)")
    add_server_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.repository is not None:
        if any(value is not None for value in (args.model, args.checkpoint, args.artifact, args.runtime)):
            raise ConfigError("--repository serves the models of its folder: drop --model, --checkpoint, --artifact "
                              "and --runtime")
        loader = Loader("effnet.serve.predictor:load_version", {"device": args.device, "threads": args.threads})
    else:
        loader = Loader("effnet.serve.predictor:load_predictor",
                        {"model": args.model, "checkpoint": args.checkpoint, "artifact": args.artifact,
                         "runtime": args.runtime, "device": args.device, "threads": args.threads})
        if args.model is None and args.checkpoint is None and args.artifact is None:
            raise ConfigError("no model to serve: give --model NAME, --checkpoint RUN_OR_FILE, --artifact FOLDER or "
                              "--repository DIR")
    serve(server_settings(args, loader))
    return 0
