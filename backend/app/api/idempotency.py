"""Idempotency-Key on every POST, PUT, PATCH and DELETE of the API (issue 21).

Semantics of Stripe's and of the IETF httpapi draft (draft-ietf-httpapi-idempotency-key-header):
the key is scoped to the tenant and the caller; the same key with the same request replays the
recorded response (with `Idempotent-Replayed: true`); the same key with a different request is
422; a retry while the first is still running is 409; records expire after
IDEMPOTENCY_KEY_TTL_HOURS. A request without the header is handled exactly as before.

Exactly once across a lost COMMIT: the request dependency (app.api.deps) claims the key in the
request's own transaction, and `IdempotentRoute` records the response in that same transaction
after the handler built it and before the dependency commits. A COMMIT lost with its
connection leaves neither the write nor the record, so the retry runs again; a COMMIT that
landed left both, so the retry replays. Only a response the handler returned is recorded: an
error rolls the transaction back, leaving nothing to replay and nothing done.

The fingerprint covers the method, the path, the query string, Content-Type and, for a route
that reads its body (JSON), a SHA-256 of the body. A route that streams its body (content
uploads, PUT /documents/{id}/content) is fingerprinted by Content-Length and the client's
Content-Digest / Repr-Digest (RFC 9530) instead, so a key covers the upload without buffering
it. Such a handler opens its own short transactions (no transaction stays open while bytes
arrive), so its record is written in a transaction of its own right after the upload's; content
is write-once, so a record lost between the two costs the replay (the retry gets 409), never a
second write.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import metrics
from app.core.config import Settings
from app.core.errors import AppError
from app.database import Database
from app.database.session import tenant_transaction
from app.models.idempotency_key import IDEMPOTENCY_KEY_MAX_LENGTH
from app.services import idempotency as idempotency_service

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENT_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Headers a replay repeats; the rest (request id, no-store, CORS) are the retry's own.
_REPLAYED_HEADERS = ("content-type", "location")
# Headers that stand for a body the route streams instead of reading (RFC 9530 digests).
_STREAMED_BODY_HEADERS = (b"content-length", b"content-digest", b"repr-digest")
# Printable ASCII without spaces: keys are UUIDs or similar opaque tokens (Stripe: up to 255).
_WELL_FORMED_KEY = re.compile(rf"[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX_LENGTH}}}")


class _Replay(Exception):  # noqa: N818  (control flow, not an error)
    """The key's request already ran: answer with its recorded response."""

    def __init__(self, stored: idempotency_service.StoredResponse) -> None:
        super().__init__("idempotent replay")
        self.stored = stored


@dataclass(frozen=True)
class _Claim:
    """A key this request holds in its transaction, to record its response under.

    `session` is None for a handler that streams its body (StreamingActor): the claim's
    transaction committed before the body arrived, so the record gets a transaction of its own.
    """

    session: AsyncSession | None
    scope: idempotency_service.IdempotencyScope
    fingerprint: bytes
    ttl: timedelta


def detach_claim(request: Request) -> None:
    """The claim's transaction has ended (a streaming handler): record in a new one."""
    claim: _Claim | None = getattr(request.state, "idempotency_claim", None)
    if claim is not None:
        request.state.idempotency_claim = replace(claim, session=None)


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key, or None (no header, or a safe method); 400 if malformed."""
    if request.method not in IDEMPOTENT_METHODS:
        return None
    values = request.headers.getlist(IDEMPOTENCY_KEY_HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise AppError("send at most one Idempotency-Key header")
    # The draft makes the value a structured-field string ("..."); bare tokens are common too.
    key = values[0].strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _WELL_FORMED_KEY.fullmatch(key):
        raise AppError(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII"
            " characters without spaces (a UUID is a good key)"
        )
    return key


async def request_fingerprint(request: Request) -> bytes:
    """SHA-256 over what makes two requests the same request (see the module docstring)."""
    digest = hashlib.sha256()
    route = request.scope.get("route")
    reads_body = isinstance(route, APIRoute) and route.body_field is not None
    parts: list[bytes] = [
        request.method.encode(),
        request.scope.get("raw_path") or request.url.path.encode(),
        request.scope.get("query_string", b""),
        request.headers.get("content-type", "").encode("latin-1"),
    ]
    if reads_body:
        # FastAPI has read and cached it already to parse the body parameter.
        parts.append(hashlib.sha256(await request.body()).digest())
    else:
        headers = request.headers
        parts += [
            headers.get(name.decode(), "").encode("latin-1") for name in _STREAMED_BODY_HEADERS
        ]
    for part in parts:
        # Length-prefixed, so no two different part lists hash the same bytes.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


async def claim_key(
    request: Request,
    session: AsyncSession,
    scope_of: Callable[[str], idempotency_service.IdempotencyScope],
) -> None:
    """In the request's transaction: take the key, or replay / refuse (409, 422).

    `scope_of(key)` builds the IdempotencyScope (tenant, caller, key). Nothing happens for a
    request without the header.
    """
    key = idempotency_key(request)
    if key is None:
        return
    scope = scope_of(key)
    fingerprint = await request_fingerprint(request)
    try:
        stored = await idempotency_service.claim(session, scope, fingerprint)
    except AppError as error:
        metrics.IDEMPOTENCY_OUTCOMES.labels(outcome=error.code).inc()
        raise
    if stored is not None:
        metrics.IDEMPOTENCY_OUTCOMES.labels(outcome="replayed").inc()
        raise _Replay(stored)
    settings: Settings = request.app.state.settings
    ttl = timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    request.state.idempotency_claim = _Claim(session, scope, fingerprint, ttl)


async def _record(request: Request, claim: _Claim, response: Response) -> None:
    body = getattr(response, "body", None)
    if not isinstance(body, bytes):
        return  # a streamed response is not replayable; none of the write routes sends one
    headers = {
        name: response.headers[name] for name in _REPLAYED_HEADERS if name in response.headers
    }
    stored = idempotency_service.StoredResponse(response.status_code, headers, body)
    if claim.session is not None:
        await idempotency_service.record(
            claim.session, claim.scope, claim.fingerprint, stored, claim.ttl
        )
    else:
        # A streamed upload committed in its own transaction; content is write-once, so a
        # record lost here costs the replay (a retry gets 409), never a second write.
        database: Database = request.app.state.database
        async with tenant_transaction(database.sessions, claim.scope.tenant_id) as session:
            await idempotency_service.record(
                session, claim.scope, claim.fingerprint, stored, claim.ttl
            )
    metrics.IDEMPOTENCY_OUTCOMES.labels(outcome="recorded").inc()


def _replayed(stored: idempotency_service.StoredResponse) -> Response:
    headers = {**stored.headers, REPLAYED_HEADER: "true"}
    return Response(content=stored.body, status_code=stored.status_code, headers=headers)


class IdempotentRoute(APIRoute):
    """An API route that records its response for the Idempotency-Key it was claimed under.

    The handler returns inside the request dependency's transaction (scope="function"), so the
    record is written before that transaction commits.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, wrapped to replay or record."""
        handle = super().get_route_handler()

        async def handle_idempotently(request: Request) -> Response:
            try:
                response = await handle(request)
            except _Replay as replay:
                return _replayed(replay.stored)
            claim: _Claim | None = getattr(request.state, "idempotency_claim", None)
            if claim is not None:
                await _record(request, claim, response)
            return response

        return handle_idempotently
