"""Bad input stopped at the edge: oversized headers and bodies, non-JSON bodies, deep nesting.

A pure ASGI middleware that answers before routing, token verification or JSON parsing, so none
of these requests costs a database transaction or more than one bounded pass over its bytes:

- a header over 8 KiB, or more than 32 KiB of headers in all → 431 (the Authorization header
  has its own guard, `app.middleware.tenant_context`, which answers first);
- a body whose Content-Length, or whose streamed (chunked) bytes, exceed MAX_REQUEST_BODY_BYTES
  → 413, without reading past the limit;
- a body that is not `application/json` (or `application/*+json`) in UTF-8 → 415;
- JSON nested deeper than MAX_JSON_DEPTH → 422. Python's parser recurses once per level, so
  depth is measured without parsing, in work linear in the body (`scan_nesting`).

All of this runs before the token is checked, so none of it may cost more than a constant
per byte read (docs/SECURITY.md, "pre-authentication work superlinear in its input").

Bodies within the limits are buffered (FastAPI reads them whole anyway) and replayed to the app.

The routes named in `streamed_bodies` (document content uploads) are the exception: their body
is not JSON and may be large, so it is passed through unread; the route streams it and enforces
its own limit (MAX_DOCUMENT_CONTENT_BYTES). Their headers are still checked here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import send_app_error
from app.core.errors import (
    AppError,
    HeaderTooLargeError,
    InvalidInputError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from app.middleware.tenant_context import MAX_AUTHORIZATION_BYTES

MAX_HEADER_BYTES = MAX_AUTHORIZATION_BYTES
"""Largest single header (name and value) accepted, the same bound as the Authorization guard's."""

MAX_TOTAL_HEADER_BYTES = 32 * 1024
"""Largest sum of all headers' names and values accepted."""

_JSON_MEDIA_TYPE = re.compile(r"application/(?:[a-z0-9.+-]+\+)?json")

# A JSON string literal, escapes included. It starts with a quote and can't fail after it (an
# unterminated one runs to the end of the body), and every quantifier is possessive: so a
# search tries each position once and a match consumes each byte once. (The pattern this
# replaced could fail on an unterminated string and was retried from every later quote, each
# time to the end of the body: quadratic on `\"` repeated, issue 13.)
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\[\s\S]?[^"\\]*+)*+"?')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_CURLY_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_OPENER = ord("[")
_COUNTED_STRETCH = 8  # below this much room, walking bracket by bracket is cheaper than counting


@dataclass(frozen=True)
class NestingScan:
    """What the nesting scan found, and the work it did to find it."""

    problem: str | None
    steps: int
    """Strings cut out plus loop iterations over the brackets; at most len(body) + 1."""


def scan_nesting(body: bytes, max_depth: int) -> NestingScan:
    """Check that the JSON in `body` nests at most `max_depth` deep, in work linear in its size.

    Strings are cut out (one forward regex pass, see _JSON_STRING), then only the brackets kept,
    and the depth followed through them left to right, stopping at the first level past the
    limit. A stretch of `max_depth - depth` brackets can't go past it, so it is taken in one step
    (its openers counted at C speed); near the limit the walk goes one bracket at a time.
    """
    structure, strings = _JSON_STRING.subn(b"", body)
    brackets = structure.translate(_CURLY_AS_SQUARE, _NOT_BRACKETS)
    steps = strings + 1
    if brackets.count(b"[") <= max_depth:
        return NestingScan(None, steps)  # too few to nest too deep; the parser checks the rest
    depth = 0
    position = 0
    while position < len(brackets):
        room = max_depth - depth
        if room >= _COUNTED_STRETCH:
            stretch_end = min(len(brackets), position + room)
            openers = brackets.count(b"[", position, stretch_end)
            depth += 2 * openers - (stretch_end - position)
            position = stretch_end
        else:  # near the limit: one bracket at a time (cheaper than a count of one or two)
            depth += 1 if brackets[position] == _OPENER else -1
            position += 1
        steps += 1
        if depth > max_depth:
            return NestingScan(f"the JSON body is nested more than {max_depth} levels deep", steps)
        if depth < 0:
            # Valid JSON never closes more than it opened.
            return NestingScan(
                "the request body is not valid JSON (its brackets don't match)", steps
            )
    return NestingScan(None, steps)


def nesting_problem(body: bytes, max_depth: int) -> str | None:
    """Why `body` can't be parsed safely as JSON nested at most `max_depth` deep, or None."""
    return scan_nesting(body, max_depth).problem


def _check_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """HeaderTooLargeError for one header over MAX_HEADER_BYTES or all of them over the total."""
    total = 0
    for name, value in headers:
        size = len(name) + len(value)
        total += size
        if size > MAX_HEADER_BYTES and name != b"authorization":
            header = name.decode("latin-1")
            raise HeaderTooLargeError(f"the {header} header is larger than {MAX_HEADER_BYTES}")
    if total > MAX_TOTAL_HEADER_BYTES:
        raise HeaderTooLargeError(
            f"the request headers total {total} bytes; the limit is {MAX_TOTAL_HEADER_BYTES}"
        )


def _check_content_type(content_type: bytes | None) -> None:
    """UnsupportedMediaTypeError unless the body is declared as JSON in UTF-8."""
    media_type, _, parameters = (content_type or b"").decode("latin-1").partition(";")
    if not _JSON_MEDIA_TYPE.fullmatch(media_type.strip().lower()):
        raise UnsupportedMediaTypeError(
            "send the body as JSON with the header Content-Type: application/json"
            f" (got {media_type.strip()[:100] or 'no Content-Type'})"
        )
    for parameter in parameters.split(";"):
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in {
            "utf-8",
            "utf8",
        }:
            raise UnsupportedMediaTypeError("JSON bodies must be UTF-8 (charset=utf-8)")


class EdgeLimits:
    """Refuse oversized headers and bodies, non-JSON bodies and deep JSON before the app runs."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_json_depth: int,
        streamed_bodies: Sequence[tuple[str, re.Pattern[str]]] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.streamed_bodies = tuple(streamed_bodies)

    def _streams_its_body(self, scope: Scope) -> bool:
        """True for a request to a route that streams its (non-JSON) body itself."""
        method, path = scope.get("method"), scope.get("path", "")
        return any(
            method == allowed and pattern.fullmatch(path)
            for allowed, pattern in self.streamed_bodies
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if self._streams_its_body(scope):
                _check_headers(scope.get("headers", []))
                body = None  # passed through unread
            else:
                body = await self._checked_body(scope, receive)
        except AppError as error:
            await send_app_error(scope, receive, send, error)
            return
        except _ClientGoneError:
            return  # nobody is left to answer
        if body is None:
            await self.app(scope, receive, send)
        else:
            await self.app(scope, _replay(body, receive), send)

    async def _checked_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The buffered body once every check passed (None: no body); AppError otherwise."""
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        _check_headers(headers)
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
            raise AppError("the Content-Length header is not a byte count")
        if declared == 0 and not streamed:
            return None
        if declared > self.max_body_bytes:
            raise self._too_large()
        _check_content_type(content_type)
        body = await self._read_body(receive)
        if not body:
            return None
        reason = nesting_problem(body, self.max_json_depth)
        if reason is not None:
            raise InvalidInputError(reason)
        return body

    @staticmethod
    def _declared_length(content_length: bytes | None) -> int | None:
        """The Content-Length as a number (0 when absent), None when it is not one."""
        if content_length is None:
            return 0
        if not content_length.isdigit() or len(content_length) > 18:
            return None
        return int(content_length)

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"the request body is larger than {self.max_body_bytes} bytes")

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
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


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
