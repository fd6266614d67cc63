"""What the HTTP and gRPC front ends share: the repository, the API key, decoding and inference.

Both front ends turn a request into encoded pictures or a prepared FP32 batch and call
:meth:`Service.infer`; pictures are decoded and prepared in ``decode_threads`` threads (they
count against the version's queue from the moment they arrive, so a flood is turned away
before any decoding), then run in the version's batches.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from effnet_runtime.portable import ImageReadError, decode_image

from .errors import RequestError, image_error
from .metrics import ServeMetrics
from .protocol import IMAGE_INPUT, TENSOR_INPUT, InferRequest, check_outputs, refuse
from .repository import Repository, ServedVersion
from .settings import ServeOptions


@dataclass(frozen=True)
class Upload:
    """One encoded picture: the name the client gave it and its bytes."""

    name: str
    data: bytes


class Service:
    """The server's state: its repository, options and metrics, the API key check, the decoder threads."""

    def __init__(self, repository: Repository, options: ServeOptions, metrics: ServeMetrics,
                 poll_s: float = 0.0) -> None:
        self.repository = repository
        self.options = options
        self.metrics = metrics
        self.poll_s = poll_s
        self._api_key = options.api_key.encode() if options.api_key else None
        self._decoder = ThreadPoolExecutor(options.decode_threads, thread_name_prefix="effnet-decode")
        self._poller: asyncio.Task | None = None

    async def start(self) -> None:
        await self.repository.start()
        if self.poll_s and self.repository.root is not None:
            self._poller = asyncio.get_running_loop().create_task(self.repository.poll(self.poll_s))

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        await self.repository.close()
        self._decoder.shutdown()

    def authorize(self, api_key: str | None, authorization: str | None) -> None:
        """Refuse (401, 403) a request without the server's key, given as ``X-API-Key`` or
        ``Authorization: Bearer`` (HTTP headers, or gRPC metadata ``x-api-key``/``authorization``)."""
        if self._api_key is None:
            return
        if not api_key and authorization and authorization.lower().startswith("bearer "):
            api_key = authorization[7:].strip()
        if not api_key:
            raise RequestError(401, "missing_api_key", "this server needs an API key: send it as X-API-Key: KEY "
                                                       "or Authorization: Bearer KEY (gRPC: metadata x-api-key)",
                               {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(api_key.encode(), self._api_key):
            raise RequestError(403, "wrong_api_key", "the API key is not the one this server was started with")

    # ------------------------------------------------------------------ inference
    async def classify(self, served: ServedVersion, uploads: Sequence[Upload]) -> np.ndarray:
        """The probabilities ``(N, classes)`` of encoded pictures."""
        served.check_room(len(uploads))
        served.decoding += len(uploads)
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self._decoder, self._prepare, served, uploads)
        finally:
            served.decoding -= len(uploads)
        return await served.submit(rows)

    def _prepare(self, served: ServedVersion, uploads: Sequence[Upload]) -> list[np.ndarray]:
        rows = []
        for upload in uploads:
            try:
                image = decode_image(upload.data, upload.name, self.options.max_pixels)
                rows.append(served.predictor.prepare(image, upload.name, self.options.max_pixels))
            except ImageReadError as error:
                raise image_error(error, upload.name) from None
        return rows

    async def infer(self, served: ServedVersion, request: InferRequest) -> np.ndarray:
        """The probabilities of an Open Inference Protocol request's one input: ``image`` (BYTES,
        encoded pictures) or ``input`` (FP32, prepared at the model's resolution)."""
        resolution = served.predictor.resolution
        check_outputs(request)
        if len(request.inputs) != 1:
            raise refuse(f"send one input: {IMAGE_INPUT!r} (BYTES [N], encoded pictures) or {TENSOR_INPUT!r} "
                         f"(FP32 [N,3,{resolution},{resolution}]); got {len(request.inputs)}")
        tensor = request.inputs[0]
        expected = {IMAGE_INPUT: "BYTES", TENSOR_INPUT: "FP32"}.get(tensor.name)
        if expected is None or tensor.datatype != expected:
            raise refuse(f"input {tensor.name!r} ({tensor.datatype}) is not one of this model's: {IMAGE_INPUT!r} "
                         f"(BYTES) or {TENSOR_INPUT!r} (FP32)")
        count = tensor.shape[0] if tensor.shape else 0
        if count == 0:
            raise refuse(f"input {tensor.name!r} holds no picture (shape {tensor.shape})")
        if count > self.options.max_files:
            raise RequestError(400, "too_many_files", f"{count} pictures in one request; send at most "
                                                      f"{self.options.max_files} (--max-files)")
        if tensor.items is not None:
            if len(tensor.shape) > 2 or tensor.shape[1:] not in ([], [1]):
                raise refuse(f"input {IMAGE_INPUT!r}: shape must be [N] or [N,1], got {tensor.shape}")
            return await self.classify(served, [Upload(f"{IMAGE_INPUT}[{i}]", item)
                                                for i, item in enumerate(tensor.items)])
        if tensor.shape[1:] != [3, resolution, resolution]:
            raise refuse(f"input {TENSOR_INPUT!r}: shape must be [N,3,{resolution},{resolution}], got {tensor.shape}")
        if not np.isfinite(tensor.array).all():
            raise refuse(f"input {TENSOR_INPUT!r} holds NaN or infinite values; send finite numbers")
        served.check_room(count)
        return await served.submit(list(tensor.array))
