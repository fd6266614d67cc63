"""Reading pictures out of HTTP requests, and refusing bad ones with a status and a reason.

A request carries its images either as ``multipart/form-data`` files (any field name, up to
``max_files``) or as the raw body of one image (``Content-Type: image/*`` or
``application/octet-stream``). Every problem becomes a :class:`RequestError`: an HTTP status,
a short code and a message naming the file, which the app answers as JSON. The body size is
bounded by :class:`BodyLimit` before anything is parsed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from PIL import Image
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data.images import ImageReadError, decode_image

RAW_TYPES = ("image/", "application/octet-stream")
READ_ERROR_STATUS = {"empty": 400, "not_an_image": 415, "too_many_pixels": 413, "corrupt": 422}


class RequestError(Exception):
    """A request the service refuses: ``status``, a short ``code`` and a message saying what to do."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the client gave it and its bytes."""

    name: str
    data: bytes


def _is_image_type(content_type: str | None) -> bool:
    return content_type is None or content_type.split(";")[0].strip().lower().startswith(RAW_TYPES)


async def read_uploads(request: Request, max_files: int) -> tuple[list[Upload], dict[str, str]]:
    """The images of ``request`` and its plain form fields (e.g. ``top_k``)."""
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_files, max_fields=16)
        except (MultiPartException, HTTPException) as error:  # Starlette turns the first into the second
            text = str(getattr(error, "detail", error))
            if "too many files" in text.lower():
                raise RequestError(400, "too_many_files", f"more than {max_files} files in one request; send at most "
                                                          f"{max_files} per request (--max-files)") from None
            raise RequestError(400, "bad_multipart", f"unreadable multipart body: {text}") from None
        uploads, fields = [], {}
        try:
            for key, value in form.multi_items():
                if isinstance(value, str):
                    fields[key] = value
                    continue
                name = value.filename or key
                if not _is_image_type(value.content_type):
                    raise RequestError(415, "unsupported_media_type",
                                       f"{name}: content type {value.content_type} is not an image; send image/* "
                                       "or application/octet-stream parts")
                uploads.append(Upload(name, await value.read()))
        finally:
            await form.close()
        if not uploads:
            raise RequestError(400, "no_image", "the form holds no file: send images as multipart files "
                                                "(e.g. curl -F file=@cat.jpg)")
        return uploads, fields
    if content_type and _is_image_type(content_type):
        return [Upload("body", await request.body())], {}
    raise RequestError(415, "unsupported_media_type",
                       f"content type {content_type or '(none)'} is not accepted; send multipart/form-data files, "
                       "or one image as the body with Content-Type image/* or application/octet-stream")


def decode_upload(upload: Upload, max_pixels: int) -> Image.Image:
    """The RGB picture in ``upload``, read like a file by ``effnet predict``; bad data raises :class:`RequestError`."""
    try:
        return decode_image(upload.data, upload.name, max_pixels)
    except ImageReadError as error:
        raise RequestError(READ_ERROR_STATUS.get(error.kind, 422), error.kind, f"{upload.name}: {error.reason}") \
            from None


class BodyTooLarge(Exception):
    """Raised inside ``receive`` when a body grows past the limit."""


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413: at once when the
    ``Content-Length`` says so, otherwise as soon as the streamed body passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def error(self) -> RequestError:
        return RequestError(413, "too_large", f"the request body exceeds the limit of {self.max_bytes / 1e6:g} MB "
                                              "(--max-upload-mb)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await send_error(send, self.error())
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await send_error(send, self.error())


async def send_error(send: Send, error: RequestError) -> None:
    """Answer ``error`` as JSON straight on the ASGI channel."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(key.lower().encode(), value.encode()) for key, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
