"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``) on grpc.aio,
built on the generated messages and servicer that ``tritonclient[grpc]`` ships.

It runs in the HTTP server's event loop, so gRPC and HTTP requests share each model version's
batcher. Inputs come in ``raw_input_contents`` (tritonclient: BYTES length-prefixed, FP32
little-endian) or in ``contents`` (``bytes_contents``, one element each; ``fp32_contents``);
outputs go out in ``raw_output_contents``, one entry per output, which tritonclient indexes by
position. The API key is read from the call's metadata (``x-api-key``, or ``authorization:
Bearer KEY``); liveness and readiness need none. Messages are limited to ``--max-upload-mb``
both ways. Methods not listed here (configuration, statistics, shared memory) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from effnet_runtime import __version__

from .api_v2 import EXTENSIONS, SERVER_NAME, metadata
from .errors import RequestError
from .protocol import InferRequest, RequestedOutput, classification_count, input_tensor, outputs_for, refuse
from .repository import READY
from .service import Service

logger = logging.getLogger("effnet.serve")
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
                422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}
CONTENTS = {"BYTES": "bytes_contents", "FP32": "fp32_contents"}


def _parameter(value: service_pb2.InferParameter) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def parse_grpc_request(request: service_pb2.ModelInferRequest) -> InferRequest:
    """The :class:`~effnet_runtime.serve.protocol.InferRequest` of a gRPC inference request."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise refuse(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: with raw contents, every "
                     "input needs one")
    inputs = []
    for position, spec in enumerate(request.inputs):
        if raw:
            data: Any = raw[position]
        elif spec.datatype in CONTENTS:
            data = list(getattr(spec.contents, CONTENTS[spec.datatype]))
        else:
            data = None  # refused by input_tensor, naming the datatype
        inputs.append(input_tensor(spec.name, spec.datatype, list(spec.shape), data))
    outputs = [RequestedOutput(spec.name, True, classification_count(_parameter(spec.parameters["classification"])
                                                                     if "classification" in spec.parameters else None,
                                                                     spec.name)) for spec in request.outputs]
    return InferRequest(request.id or None, inputs, outputs or None, True)


def answered(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Count the call and turn a :class:`~effnet_runtime.serve.errors.RequestError` into its gRPC status."""

    @functools.wraps(method)
    async def call(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            response = await method(self, request, context)
        except RequestError as error:
            code = STATUS_CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT)
            self.service.metrics.grpc_requests.labels(method.__name__, code.name).inc()
            await context.abort(code, error.message)
        self.service.metrics.grpc_requests.labels(method.__name__, "OK").inc()
        return response

    return call


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The protocol's gRPC methods over ``service``."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def authorize(self, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())  # keys arrive in lower case
        self.service.authorize(metadata.get("x-api-key"), metadata.get("authorization"))

    @answered
    async def ServerLive(self, request: Any, context: Any) -> service_pb2.ServerLiveResponse:  # noqa: N802
        return service_pb2.ServerLiveResponse(live=True)

    @answered
    async def ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:  # noqa: N802
        return service_pb2.ServerReadyResponse(ready=self.service.repository.ready())

    @answered
    async def ModelReady(self, request: Any, context: Any) -> service_pb2.ModelReadyResponse:  # noqa: N802
        self.authorize(context)
        try:
            self.service.repository.get(request.name, request.version)
        except RequestError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    @answered
    async def ServerMetadata(self, request: Any, context: Any) -> service_pb2.ServerMetadataResponse:  # noqa: N802
        self.authorize(context)
        return service_pb2.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    @answered
    async def ModelMetadata(self, request: Any, context: Any) -> service_pb2.ModelMetadataResponse:  # noqa: N802
        self.authorize(context)
        found = metadata(self.service, request.name, request.version or None)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=found["name"], versions=found["versions"], platform=found["platform"],
            inputs=[tensor(**t) for t in found["inputs"]], outputs=[tensor(**t) for t in found["outputs"]])

    @answered
    async def ModelInfer(self, request: Any, context: Any) -> service_pb2.ModelInferResponse:  # noqa: N802
        self.authorize(context)
        parsed = parse_grpc_request(request)
        with self.service.repository.get(request.model_name, request.model_version).in_use() as used:
            probabilities = await self.service.infer(used, parsed)
        response = service_pb2.ModelInferResponse(model_name=used.name, model_version=used.version, id=request.id)
        for tensor, _ in outputs_for(parsed, probabilities, used.predictor.labels):
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(tensor.raw())
        return response

    @answered
    async def RepositoryIndex(self, request: Any, context: Any) -> service_pb2.RepositoryIndexResponse:  # noqa: N802
        self.authorize(context)
        rows = [row for row in self.service.repository.index() if not request.ready or row["state"] == READY]
        return service_pb2.RepositoryIndexResponse(models=[service_pb2.RepositoryIndexResponse.ModelIndex(**row)
                                                           for row in rows])

    @answered
    async def RepositoryModelLoad(self, request: Any, context: Any) -> service_pb2.RepositoryModelLoadResponse:  # noqa: N802
        self.authorize(context)
        await self.service.repository.load(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @answered
    async def RepositoryModelUnload(self, request: Any, context: Any) -> service_pb2.RepositoryModelUnloadResponse:  # noqa: N802
        self.authorize(context)
        await self.service.repository.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC writes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc(service: Service, address: str) -> grpc.aio.Server:
    """A started gRPC server for ``service`` on ``address``; messages up to ``--max-upload-mb``.
    SO_REUSEPORT is off, so a port in use is an error rather than silently shared."""
    limit = service.options.max_upload_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit), ("grpc.so_reuseport", 0)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(service), server)
    port = server.add_insecure_port(address)
    await server.start()
    logger.info("effnet serve: gRPC on %s", address.rpartition(":")[0] + f":{port}")
    return server
