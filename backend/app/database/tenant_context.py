"""The one place that sets `app.current_tenant_id`, which every RLS policy reads.

The setting is transaction-local (`set_config(..., true)`), so it disappears at COMMIT or
ROLLBACK and a pooled connection never carries one request's tenant into the next. Nothing
outside app/database/ calls into this module: code gets a tenant-scoped session from
`app.database.session.tenant_transaction`, which opens the transaction with `enter_tenant`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.core.tracing import UNTRACED_STATEMENT_OPTION
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

OPENING_OPTIONS: Mapping[str, object] = {"isolation_level": "AUTOCOMMIT"}
"""The execution options a tenant transaction checks its connection out with (`enter_tenant`).

Autocommit for this checkout only, so that psycopg sends no `BEGIN` of its own: the opening
message carries it. The engine's `begin` event (transaction-mode settings) stays silent for an
autocommit connection, since the opening message carries those settings too."""


def set_locally_calls(values: Mapping[str, str]) -> str:
    """`set_config(name, value, true)` for each setting: a SELECT list, values quoted."""

    def literal(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    return ", ".join(
        f"set_config({literal(name)}, {literal(value)}, true)" for name, value in values.items()
    )


def opening_sql(
    tenant_id: uuid.UUID, *, transaction_settings: str | None = None, citus: bool = False
) -> str:
    """`BEGIN` with everything a tenant transaction needs first, as one simple query.

    In order: the connection's transaction-local settings when pooled by transaction
    (`transaction_settings`, from `set_locally_calls`), the tenant context, the caller-change
    counter; then `BEGIN`; then, on Citus, `SET LOCAL` of the context. A simple query may hold
    several statements but no bound parameters, so the tenant id is a literal: only a
    `uuid.UUID` is accepted, whose text is 36 hex digits and dashes. The SELECT comes first so
    that its row is the query's first result (the one the driver returns); statements of one
    simple query share an implicit transaction, which the `BEGIN` after them turns into an
    explicit one, so the transaction-local settings stay for what follows
    (https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-MULTI-STATEMENT).
    """
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a uuid.UUID")
    settings = f"{transaction_settings}, " if transaction_settings else ""
    # The only values spliced in: a uuid.UUID's text (checked above) and the engine's own
    # settings, quoted by set_locally_calls.
    sql = (
        f"SELECT {settings}set_config('app.current_tenant_id', '{tenant_id}', true),"  # noqa: S608
        f" (SELECT last_value FROM public.{CALLER_CHANGE_SEQUENCE}); BEGIN"
    )
    if citus:
        sql += f"; SET LOCAL app.current_tenant_id = '{tenant_id}'"
    return sql


async def enter_tenant(connection: AsyncConnection, tenant_id: uuid.UUID) -> int:
    """Begin `connection`'s transaction with the tenant context set, in one round trip.

    `connection` is the session's, checked out with `OPENING_OPTIONS`. Returns the
    caller-change counter as the transaction began (`caller_change_seq`, numbered in commit
    order by the triggers on tenants and users): app.services.caller_cache serves a cached
    caller only if its listener has heard that number.

    psycopg sends its own `BEGIN` as a round trip before a transaction's first statement
    (`Connection._start_query`). Here the connection is in autocommit mode for this checkout
    (SQLAlchemy restores the mode when the connection goes back to the pool), so psycopg sends
    no BEGIN of its own, and the transaction is opened by ours, in the same message as the
    context. Every later statement runs inside it; SQLAlchemy's commit and rollback reach
    psycopg, which sends COMMIT or ROLLBACK whenever the server says a transaction is open
    (it looks at the server's transaction status, not at the autocommit flag).
    """
    options = connection.sync_engine.get_execution_options()
    opening = opening_sql(
        tenant_id,
        transaction_settings=options.get(TRANSACTION_SETTINGS_OPTION),
        citus=bool(options.get(CITUS_OPTION)),
    )
    # No SQL span for it (app/core/tracing.py): every transaction sends it, and its text holds
    # the tenant id, which goes on spans only when OTEL_SPAN_TENANT_ID asks for it.
    row = (
        await connection.exec_driver_sql(
            opening, execution_options={UNTRACED_STATEMENT_OPTION: True}
        )
    ).one()
    return int(row[-1])


async def become_admin(session: AsyncSession) -> None:
    """Switch the current transaction to the provisioning role (admin code paths only)."""
    await session.execute(_SET_ADMIN_ROLE)
