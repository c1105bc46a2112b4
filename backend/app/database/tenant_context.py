"""The one place that sets `app.current_tenant_id`, which every RLS policy reads.

The setting is transaction-local (`set_config(..., true)`), so it disappears at COMMIT or
ROLLBACK and a pooled connection never carries one request's tenant into the next. Nothing
outside app/database/ calls into this module: code gets a tenant-scoped session from
`app.database.session.tenant_transaction`, which opens the transaction with `enter_tenant`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Literal, get_args

import psycopg
from psycopg import generators, pq
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.database.roles import ADMIN_ROLE

TENANT_SETTING = "app.current_tenant_id"
# Numbers changes to tenants and users in commit order (migration 3c9e1f5a7b20).
CALLER_CHANGE_SEQUENCE = "caller_change_seq"

_SET_ADMIN_ROLE = text(f"SELECT set_config('role', '{ADMIN_ROLE}', true)")

# Engine execution options (set by the engine factory, app/database/engine.py), read here when
# a tenant transaction opens:
# - on Citus (DATABASE_CITUS), the context is also set with SET LOCAL, the only form Citus
#   passes on to the workers that hold the shards (citus.propagate_set_commands = 'local');
#   set_config() calls are not propagated.
CITUS_OPTION = "tenant_docs_citus"
# - behind pgbouncer in transaction mode (DATABASE_POOL_MODE=transaction), the connection's
#   settings as `set_config(..., true)` calls (`set_locally_calls`), made in every transaction.
TRANSACTION_SETTINGS_OPTION = "tenant_docs_transaction_settings"

IsolationLevel = Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]
"""A transaction's isolation level, as `BEGIN ISOLATION LEVEL` spells it."""
_ISOLATION_LEVELS: frozenset[str] = frozenset(get_args(IsolationLevel))


def set_locally_calls(values: Mapping[str, str]) -> str:
    """`set_config(name, value, true)` for each setting: a SELECT list, values quoted."""

    def literal(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    return ", ".join(
        f"set_config({literal(name)}, {literal(value)}, true)" for name, value in values.items()
    )


def opening_sql(
    tenant_id: uuid.UUID,
    *,
    transaction_settings: str | None = None,
    citus: bool = False,
    isolation: IsolationLevel | None = None,
) -> str:
    """`BEGIN` with everything a tenant transaction needs first, as one simple query.

    In order: `BEGIN` (with `isolation` if given; the server's default otherwise); a SELECT of
    the connection's transaction-local settings when pooled by transaction
    (`transaction_settings`, from `set_locally_calls`), the tenant context and the
    caller-change counter; then, on Citus, `SET LOCAL` of the context. A simple query may hold
    several statements but no bound parameters, so the tenant id is a literal: only a
    `uuid.UUID` is accepted, whose text is 36 hex digits and dashes, and the isolation level
    only as one of `IsolationLevel`'s names.
    """
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a uuid.UUID")
    if isolation is not None and isolation not in _ISOLATION_LEVELS:
        raise ValueError(f"isolation must be one of {sorted(_ISOLATION_LEVELS)}")
    begin = f"BEGIN ISOLATION LEVEL {isolation}" if isolation else "BEGIN"
    settings = f"{transaction_settings}, " if transaction_settings else ""
    # The only values spliced in: a uuid.UUID's text and an isolation level's name (both
    # checked above) and the engine's own settings, quoted by set_locally_calls.
    sql = (
        f"{begin}; SELECT {settings}set_config('app.current_tenant_id', '{tenant_id}', true),"  # noqa: S608
        f" (SELECT last_value FROM public.{CALLER_CHANGE_SEQUENCE})"
    )
    if citus:
        sql += f"; SET LOCAL app.current_tenant_id = '{tenant_id}'"
    return sql


async def enter_tenant(
    connection: AsyncConnection, tenant_id: uuid.UUID, *, isolation: IsolationLevel | None = None
) -> int:
    """Begin `connection`'s transaction with the tenant context set, in one round trip.

    `connection` is the session's, on an autocommit engine (`build_runtime_engine`), so the
    driver sends no `BEGIN` of its own: the opening message carries it. Every later statement
    runs inside that transaction; SQLAlchemy's commit and rollback reach psycopg, which sends
    COMMIT or ROLLBACK whenever the server says a transaction is open (it looks at the
    server's transaction status, not at the autocommit flag). Returns the caller-change
    counter as the transaction began (`caller_change_seq`, numbered in commit order by the
    triggers on tenants and users): app.services.caller_cache serves a cached caller only if
    its listener has heard that number.

    The message goes to psycopg directly, not through SQLAlchemy's statement execution, which
    cost every request ~0.2 ms of CPU for a statement whose only result is one number (issue
    20). So no SQLAlchemy event sees it (no SQL span: its text holds the tenant id); a driver
    error is still raised as SQLAlchemy's, through SQLAlchemy's own handling (a lost
    connection is invalidated, and app.api.errors answers 503).
    """
    options = connection.sync_engine.get_execution_options()
    opening = opening_sql(
        tenant_id,
        transaction_settings=options.get(TRANSACTION_SETTINGS_OPTION),
        citus=bool(options.get(CITUS_OPTION)),
        isolation=isolation,
    )
    pooled = await connection.get_raw_connection()
    driver: psycopg.AsyncConnection[Any] = pooled.driver_connection  # type: ignore[assignment]
    if not driver.autocommit:
        # psycopg would send a BEGIN of its own first: a round trip more, and ours would be
        # refused as nested.
        raise RuntimeError("tenant transactions need an autocommit engine (build_runtime_engine)")
    try:
        # The message as it is (simple query protocol) and its results in one go, on the
        # connection's own lock and wait loop: what psycopg itself does for COMMIT. A cursor
        # cost ~50 µs of CPU more per request (query conversion, a result set per statement).
        async with driver.lock:
            driver.pgconn.send_query(opening.encode())
            results = await driver.wait(generators.execute(driver.pgconn))
        for result in results:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise psycopg.errors.error_from_result(result, encoding=driver.info.encoding)
    except psycopg.Error as error:
        await connection.run_sync(_raise_as_sqlalchemy_error, error, opening)
        raise  # not reached: the line above raises
    # The one statement with a row (a Citus SET LOCAL may follow it).
    rows = [result for result in results if result.status == pq.ExecStatus.TUPLES_OK]
    if len(rows) != 1 or rows[0].ntuples != 1:
        raise RuntimeError("the opening message returned no row")
    value = rows[0].get_value(0, rows[0].nfields - 1)
    assert value is not None
    return int(value)


def _raise_as_sqlalchemy_error(sync_connection: Connection, error: Exception, sql: str) -> None:
    # SQLAlchemy's own path for a driver error: the same exception types as any statement's,
    # and the connection invalidated when it was lost. (A private method, stable since 1.x.)
    sync_connection._handle_dbapi_exception(error, sql, None, None, None)


async def become_admin(session: AsyncSession) -> None:
    """Switch the current transaction to the provisioning role (admin code paths only)."""
    await session.execute(_SET_ADMIN_ROLE)
