"""Bad input stopped at the edge: oversized headers and bodies, non-JSON bodies, deep nesting.

A pure ASGI middleware that answers before routing, token verification or JSON parsing, so none
of these requests costs a database transaction or more than one bounded pass over its bytes:

- a header over 8 KiB, or more than 32 KiB of headers in all → 431 (the Authorization header
  has its own guard, `app.middleware.tenant_context`, which answers first);
- a body whose Content-Length, or whose streamed (chunked) bytes, exceed MAX_REQUEST_BODY_BYTES
  → 413, without reading past the limit;
- a body that is not `application/json` (or `application/*+json`) in UTF-8 → 415;
- JSON nested deeper than MAX_JSON_DEPTH → 422. Python's parser recurses once per level, so
  depth is measured without parsing, in one forward pass over the bytes (`scan_nesting`).

All of this runs before the token is checked, so none of it may cost more than a constant
per byte read (docs/SECURITY.md, "pre-authentication work superlinear in its input").

Bodies within the limits are buffered (FastAPI reads them whole anyway) and replayed to the app.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import send_error
from app.middleware.tenant_context import MAX_AUTHORIZATION_BYTES

MAX_HEADER_BYTES = MAX_AUTHORIZATION_BYTES
"""Largest single header (name and value) accepted, the same bound as the Authorization guard's."""

MAX_TOTAL_HEADER_BYTES = 32 * 1024
"""Largest sum of all headers' names and values accepted."""

_JSON_MEDIA_TYPE = re.compile(r"application/(?:[a-z0-9.+-]+\+)?json")

# One token of the nesting scan, matched at the scan position (never searched for, so no byte
# is looked at twice). First everything that cannot change the depth: bytes other than quotes
# and brackets, and whole string literals (escapes included; an unterminated one runs to the
# end); then the run of bytes up to the next string, which holds the next brackets. Every
# quantifier is possessive and the alternatives start on different bytes, so nothing
# backtracks: a match costs the bytes it consumes. (The regex this replaced searched for a
# string from every quote and rescanned to the end each time: quadratic on `\"` repeated.)
_NESTING_TOKEN = re.compile(rb'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\[\s\S]?[^"\\]*+)*+"?)*+([^"]*+)')
_DEPTH_CHANGE = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))

Problem = tuple[int, str, str]


@dataclass(frozen=True)
class NestingScan:
    """What the nesting scan found, and the work it did to find it."""

    problem: str | None
    steps: int
    """Loop iterations: one per token plus one per byte walked one by one."""
    bytes_scanned: int
    """How far the scan got; each byte before it was consumed by exactly one token."""


def scan_nesting(body: bytes, max_depth: int) -> NestingScan:
    """Check in one forward pass over `body` that its JSON nests at most `max_depth` deep.

    A state machine over tokens (see _NESTING_TOKEN): strings are skipped whole, escapes
    included, and the depth changes by the brackets between them. A run of brackets that cannot
    reach the limit (depth + its openers <= max_depth) is counted at C speed; only a run that
    might is walked byte by byte, and the walk stops at the first level past the limit. Each
    token but the last consumes at least one byte, so `steps` <= 2 * len(body) + 1.
    """
    depth = 0
    steps = 0
    position = 0
    while True:
        token = _NESTING_TOKEN.match(body, position)
        assert token is not None  # the pattern matches the empty string
        steps += 1
        run = token.group(1)
        position = token.end()
        if not run:
            return NestingScan(None, steps, position)  # the end of the body (or of an open string)
        openers = run.count(b"[") + run.count(b"{")
        if depth + openers <= max_depth:
            depth += openers - run.count(b"]") - run.count(b"}")
        else:
            for byte in run:
                steps += 1
                depth += _DEPTH_CHANGE[byte]
                if depth > max_depth:
                    return NestingScan(
                        f"the JSON body is nested more than {max_depth} levels deep",
                        steps,
                        position,
                    )
        if depth < 0:
            # Valid JSON never closes more than it opened; the parser needn't see it.
            return NestingScan(
                "the request body is not valid JSON (its brackets don't match)", steps, position
            )


def nesting_problem(body: bytes, max_depth: int) -> str | None:
    """Why `body` can't be parsed safely as JSON nested at most `max_depth` deep, or None."""
    return scan_nesting(body, max_depth).problem


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
