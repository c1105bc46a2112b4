"""Idempotency records (issue 21): claim a key before a write, record its response in the same
transaction, replay it on a retry, purge expired ones.

In-flight detection: the claim takes a transaction-scoped advisory lock on (tenant, caller,
key) (`app.database.advisory_locks`), which never waits. A second request with the same key
while the first one's transaction is open fails to take it and gets 409; once the first
commits, its record is visible (PostgreSQL releases the lock after the commit is visible) and
the second replays it; if the first rolled back, nothing was written and the second runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import IdempotencyKeyInFlightError, IdempotencyKeyReusedError
from app.database.advisory_locks import LockClass, try_transaction_lock
from app.models import IdempotencyKey


@dataclass(frozen=True)
class StoredResponse:
    """A response recorded for a key: what a retry with the same request gets back."""

    status_code: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class IdempotencyScope:
    """Whose key it is: the tenant, the caller and the client's key."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    key: str


async def claim(
    session: AsyncSession, scope: IdempotencyScope, fingerprint: bytes
) -> StoredResponse | None:
    """Take the key for this transaction; the stored response if the request already ran.

    Raises IdempotencyKeyInFlightError (409) while another transaction holds the key and
    IdempotencyKeyReusedError (422) when the key was used for a different request.
    """
    lock_scope = f"{scope.tenant_id}/{scope.user_id}/{scope.key}"
    if not await try_transaction_lock(session, LockClass.IDEMPOTENCY_KEY, lock_scope):
        raise IdempotencyKeyInFlightError(
            "a request with this Idempotency-Key is still in progress; retry when it has finished",
            headers={"Retry-After": "1"},
        )
    # A statement after the lock: its snapshot sees a record committed before the lock was free.
    row = (
        await session.execute(
            select(
                IdempotencyKey.request_fingerprint,
                IdempotencyKey.response_status,
                IdempotencyKey.response_headers,
                IdempotencyKey.response_body,
            ).where(
                IdempotencyKey.tenant_id == scope.tenant_id,
                IdempotencyKey.user_id == scope.user_id,
                IdempotencyKey.idempotency_key == scope.key,
                IdempotencyKey.expires_at > func.now(),
            )
        )
    ).one_or_none()
    if row is None:
        return None
    if bytes(row.request_fingerprint) != fingerprint:
        raise IdempotencyKeyReusedError(
            "this Idempotency-Key was already used for a different request; use a new key"
        )
    return StoredResponse(row.response_status, dict(row.response_headers), bytes(row.response_body))


async def record(
    session: AsyncSession,
    scope: IdempotencyScope,
    fingerprint: bytes,
    response: StoredResponse,
    ttl: timedelta,
) -> None:
    """Store the response in the request's transaction (it commits or vanishes with the write).

    An expired record of the same key that the purge has not removed yet is overwritten.
    """
    values: dict[str, Any] = {
        "request_fingerprint": fingerprint,
        "response_status": response.status_code,
        "response_headers": response.headers,
        "response_body": response.body,
        "expires_at": func.now() + ttl,
    }
    statement = insert(IdempotencyKey).values(
        tenant_id=scope.tenant_id, user_id=scope.user_id, idempotency_key=scope.key, **values
    )
    statement = statement.on_conflict_do_update(
        constraint="uq_idempotency_keys_tenant_id_user_id_idempotency_key",
        set_=values,
        where=IdempotencyKey.expires_at <= func.now(),
    )
    await session.execute(statement)


async def purge_expired(session: AsyncSession) -> int:
    """Delete every tenant's expired records (admin session); the number deleted."""
    result = await session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.expires_at <= func.now())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
