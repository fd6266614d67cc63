"""Reading request bodies within the limits: pictures out of ``/v1/predict`` requests, the raw
(possibly compressed) body of a ``/v2`` request, and the size limit on every body.

``/v1/predict`` takes its pictures either as ``multipart/form-data`` files (any field name, up
to ``max_files``) or as the raw body of one picture (``Content-Type: image/*`` or
``application/octet-stream``). :class:`BodyLimit` refuses a body over ``--max-upload-mb`` before
anything is parsed: at once when ``Content-Length`` says so, otherwise while it streams in.
"""

from __future__ import annotations

import json
import zlib

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import RequestError
from .service import Upload

RAW_TYPES = ("image/", "application/octet-stream")
DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""zlib's window bits for each ``Content-Encoding`` a ``/v2`` request may use."""


def _is_image_type(content_type: str | None) -> bool:
    return content_type is None or content_type.split(";")[0].strip().lower().startswith(RAW_TYPES)


async def read_uploads(request: Request, max_files: int) -> tuple[list[Upload], dict[str, str]]:
    """The pictures of a ``/v1/predict`` request and its plain form fields (e.g. ``top_k``)."""
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


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body of a ``/v2`` request whatever its content type (tritonclient sends none),
    decompressed when its ``Content-Encoding`` is gzip or deflate, at most ``max_bytes`` either way."""
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in DECOMPRESSORS:
        raise RequestError(415, "unsupported_encoding", f"Content-Encoding {encoding[:40]!r} is not accepted; send "
                                                        "gzip, deflate or an uncompressed body")
    decompressor = zlib.decompressobj(DECOMPRESSORS[encoding])
    try:
        plain = decompressor.decompress(body, max_bytes + 1)
    except zlib.error as error:
        raise RequestError(400, "bad_encoding", f"the {encoding} body does not decompress ({error})") from None
    if len(plain) > max_bytes or decompressor.unconsumed_tail:
        raise too_large(max_bytes)
    return plain


def too_large(max_bytes: int) -> RequestError:
    return RequestError(413, "too_large", f"the request body exceeds the limit of {max_bytes / 1e6:g} MB "
                                          "(--max-upload-mb)")


class BodyTooLarge(Exception):
    """Raised inside ``receive`` when a body grows past the limit."""


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413: at once when the
    ``Content-Length`` says so, otherwise as soon as the streamed body passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await send_error(send, too_large(self.max_bytes), scope["path"])
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
            await send_error(send, too_large(self.max_bytes), scope["path"])


async def send_error(send: Send, error: RequestError, path: str) -> None:
    """Answer ``error`` as JSON straight on the ASGI channel."""
    body = json.dumps(error.body(path)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(key.lower().encode(), value.encode()) for key, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
