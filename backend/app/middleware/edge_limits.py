"""Bad input stopped at the edge: oversized headers and bodies, non-JSON bodies, deep nesting.

A pure ASGI middleware that answers before routing, token verification or JSON parsing, so none
of these requests costs a database transaction or more than one bounded pass over its bytes:

- a header over 8 KiB, or more than 32 KiB of headers in all → 431 (the Authorization header
  has its own guard, `app.middleware.tenant_context`, which answers first);
- a body whose Content-Length, or whose streamed (chunked) bytes, exceed MAX_REQUEST_BODY_BYTES
  → 413, without reading past the limit;
- a body that is not `application/json` (or `application/*+json`) in UTF-8 → 415;
- JSON nested deeper than MAX_JSON_DEPTH → 422. Python's parser recurses once per level, so
  depth is measured without parsing (and without recursion) by peeling bracket pairs.

Bodies within the limits are buffered (FastAPI reads them whole anyway) and replayed to the app.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import send_error
from app.middleware.tenant_context import MAX_AUTHORIZATION_BYTES

MAX_HEADER_BYTES = MAX_AUTHORIZATION_BYTES
"""Largest single header (name and value) accepted, the same bound as the Authorization guard's."""

MAX_TOTAL_HEADER_BYTES = 32 * 1024
"""Largest sum of all headers' names and values accepted."""

_JSON_MEDIA_TYPE = re.compile(r"application/(?:[a-z0-9.+-]+\+)?json")  # fullmatch()
# A JSON string literal (escapes included); strings may hold brackets that don't nest anything.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_CURLY_AS_SQUARE = bytes.maketrans(b"{}", b"[]")

Problem = tuple[int, str, str]


def nesting_problem(body: bytes, max_depth: int) -> str | None:
    """Why `body` can't be parsed safely as JSON nested at most `max_depth` deep, or None.

    Strings are removed, then only brackets kept; each pass removes every adjacent `[]` pair,
    i.e. one level of the deepest nesting, so `max_depth` passes empty any valid JSON that is
    shallow enough. Cost: at most `max_depth` C-speed passes, and one for typical bodies.
    """
    structure = _JSON_STRING.sub(b"", body).translate(_CURLY_AS_SQUARE, _NOT_BRACKETS)
    if len(structure) <= 2 * max_depth:
        return None  # too few brackets to nest deeper than the limit; the parser checks the rest
    for _ in range(max_depth):
        peeled = structure.replace(b"[]", b"")
        if not peeled:
            return None
        if len(peeled) == len(structure):
            # Valid JSON always has an innermost pair; without one the brackets don't match.
            return "the request body is not valid JSON (its brackets don't match)"
        structure = peeled
    return f"the JSON body is nested more than {max_depth} levels deep"


def _header_problem(headers: list[tuple[bytes, bytes]]) -> Problem | None:
    total = 0
    for name, value in headers:
        size = len(name) + len(value)
        total += size
        if size > MAX_HEADER_BYTES and name != b"authorization":
            header = name.decode("latin-1")
            return 431, "header_too_large", f"the {header} header is larger than {MAX_HEADER_BYTES}"
    if total > MAX_TOTAL_HEADER_BYTES:
        return (
            431,
            "header_too_large",
            f"the request headers total {total} bytes; the limit is {MAX_TOTAL_HEADER_BYTES}",
        )
    return None


def _content_type_problem(content_type: bytes | None) -> Problem | None:
    media_type, _, parameters = (content_type or b"").decode("latin-1").partition(";")
    if not _JSON_MEDIA_TYPE.fullmatch(media_type.strip().lower()):
        return (
            415,
            "unsupported_media_type",
            "send the body as JSON with the header Content-Type: application/json"
            f" (got {media_type.strip()[:100] or 'no Content-Type'})",
        )
    for parameter in parameters.split(";"):
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in {
            "utf-8",
            "utf8",
        }:
            return 415, "unsupported_media_type", "JSON bodies must be UTF-8 (charset=utf-8)"
    return None


class EdgeLimits:
    """Refuse oversized headers and bodies, non-JSON bodies and deep JSON before the app runs."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        problem = _header_problem(headers)
        if problem is not None:
            await send_error(scope, receive, send, problem)
            return
        content_length: bytes | None = None
        content_type: bytes | None = None
        streamed = False
        for name, value in headers:
            if name == b"content-length":
                content_length = value
            elif name == b"content-type":
                content_type = value
            elif name == b"transfer-encoding":
                streamed = True
        declared = self._declared_length(content_length)
        if declared is None:
            await send_error(
                scope,
                receive,
                send,
                (400, "bad_request", "the Content-Length header is not a byte count"),
            )
            return
        if declared == 0 and not streamed:
            await self.app(scope, receive, send)
            return
        problem = self._size_problem(declared) or _content_type_problem(content_type)
        if problem is not None:
            await send_error(scope, receive, send, problem)
            return
        try:
            body = await self._read_body(receive)
        except _BodyTooLargeError:
            await send_error(scope, receive, send, self._too_large())
            return
        except _ClientGoneError:
            return  # nobody is left to answer
        if not body:
            await self.app(scope, receive, send)
            return
        reason = nesting_problem(body, self.max_json_depth)
        if reason is not None:
            await send_error(scope, receive, send, (422, "validation_error", reason))
            return
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    def _declared_length(content_length: bytes | None) -> int | None:
        """The Content-Length as a number (0 when absent), None when it is not one."""
        if content_length is None:
            return 0
        if not content_length.isdigit() or len(content_length) > 18:
            return None
        return int(content_length)

    def _size_problem(self, size: int) -> Problem | None:
        return None if size <= self.max_body_bytes else self._too_large()

    def _too_large(self) -> Problem:
        return (
            413,
            "payload_too_large",
            f"the request body is larger than {self.max_body_bytes} bytes",
        )

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body; stops reading as soon as more than the limit has arrived."""
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGoneError
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:
                raise _BodyTooLargeError
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _BodyTooLargeError(Exception):
    """More bytes arrived than MAX_REQUEST_BODY_BYTES allows."""


class _ClientGoneError(Exception):
    """The client disconnected before sending its whole body."""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the buffered body over once, then defers to the server's."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
