"""Refusals: one exception for every request the server turns away, answered as JSON in the shape
of the API it came to, or as a gRPC status.

- ``/v2`` (the Open Inference Protocol): ``{"error": MESSAGE}``;
- everything else (``/v1``, ``/healthz`` ...): ``{"error": CODE, "message": MESSAGE}``.
"""

from __future__ import annotations

from typing import Any

from effnet_runtime.portable import ImageReadError

PROTOCOL_PREFIX = "/v2"
CLIENT_CLOSED = 499
"""The status counted (nginx's convention) for a client that went away before its request was read."""
READ_ERROR_STATUS = {"empty": 400, "not_an_image": 415, "too_many_pixels": 413, "corrupt": 422}


class RequestError(Exception):
    """A request the server refuses: an HTTP ``status``, a short ``code`` and a message saying
    what was wrong and what to do."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self, path: str) -> dict[str, Any]:
        """The JSON answer for a request to ``path``."""
        if path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/"):
            return {"error": self.message}
        return {"error": self.code, "message": self.message}


def image_error(error: ImageReadError, name: str) -> RequestError:
    """The refusal of an image that cannot be used, naming it."""
    return RequestError(READ_ERROR_STATUS.get(error.kind, 422), error.kind, f"{name}: {error.reason}")
