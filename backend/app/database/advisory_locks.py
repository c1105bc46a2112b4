"""Transaction-scoped advisory locks: the one way the app takes one without waiting.

Two-int4 form `(lock class, hashtext(scope))`: each user of advisory locks has its own class,
so scopes never collide across users (the one-bigint form, used by the vector index CLI, never
overlaps the two-int4 form). `pg_try_advisory_xact_lock` never waits and PostgreSQL releases
the lock when the transaction ends, however it ends (commit, rollback, the connection dying),
so nothing can leak one; it also works through pgbouncer in transaction mode, where a
session-level lock would stay on a server connection another client gets next.
https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS

Advisory locks are per database server: under Citus the key hashes to one coordinator. Two
scopes may share a `hashtext` (32 bits): the second is then refused as if it were the first,
a false refusal once in billions of pairs, never a missed one.
"""

from __future__ import annotations

from enum import IntEnum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


class LockClass(IntEnum):
    """The first int4 of the key: one value per kind of lock."""

    IDEMPOTENCY_KEY = 0x1D3A  # (tenant, caller, key): one request per Idempotency-Key
    TENANT_EXPORT = 0xE7A0  # tenant: one export stream per tenant (app.services.tenant_export)
    TENANT_EXPORT_CLAIM = 0xE7A1  # tenant: an export from before its audit row to TENANT_EXPORT


_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:lock_class, hashtext(:scope))")


async def try_transaction_lock(session: AsyncSession, lock_class: LockClass, scope: str) -> bool:
    """Take `(lock_class, scope)` until the session's transaction ends; False if another
    transaction holds it (never waits)."""
    result = await session.execute(_TRY_LOCK, {"lock_class": int(lock_class), "scope": scope})
    return bool(result.scalar_one())


async def transaction_lock_free(session: AsyncSession, lock_class: LockClass, scope: str) -> bool:
    """Whether `(lock_class, scope)` is free right now, without keeping it: tried in a
    savepoint that is rolled back, which releases a lock taken in it (the explicit-locking
    docs: "released immediately if the savepoint is rolled back to")."""
    savepoint = await session.begin_nested()
    try:
        return await try_transaction_lock(session, lock_class, scope)
    finally:
        await savepoint.rollback()
