"""The one place that sets `app.current_tenant_id`, which every RLS policy reads.

The setting is transaction-local (`set_config(..., true)`), so it disappears at COMMIT or
ROLLBACK and a pooled connection never carries one request's tenant into the next. Nothing
outside app/database/ calls into this module: code gets a tenant-scoped session from
`app.database.session.tenant_transaction`, which opens the transaction with `enter_tenant`.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.database.roles import ADMIN_ROLE

TENANT_SETTING = "app.current_tenant_id"
# Numbers changes to tenants and users in commit order (migration 3c9e1f5a7b20).
CALLER_CHANGE_SEQUENCE = "caller_change_seq"

_SET_ADMIN_ROLE = text(f"SELECT set_config('role', '{ADMIN_ROLE}', true)")


def begin_in_tenant_sql(tenant_id: uuid.UUID) -> str:
    """The tenant context, the change counter and `BEGIN` as one simple query (one round trip).

    A simple query may hold several statements but no bound parameters, so the tenant id is a
    literal: only a `uuid.UUID` is accepted, whose text is 36 hex digits and dashes. The SELECT
    comes first so that its row is the query's first result (the one the driver returns);
    statements of one simple query share an implicit transaction, which the `BEGIN` after them
    turns into an explicit one, so the transaction-local setting stays for what follows
    (https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-MULTI-STATEMENT).
    """
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a uuid.UUID")
    return (  # the only value spliced in is a uuid.UUID's text (checked above)
        f"SELECT set_config('app.current_tenant_id', '{tenant_id}', true),"  # noqa: S608
        f" (SELECT last_value FROM public.{CALLER_CHANGE_SEQUENCE}); BEGIN"
    )


async def enter_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """Begin `session`'s transaction with the tenant context set, in one round trip.

    Returns the caller-change counter as the transaction began (`caller_change_seq`, numbered
    in commit order by the triggers on tenants and users): app.services.caller_cache serves a
    cached caller only if its listener has heard that number.

    psycopg sends its own `BEGIN` as a round trip before a transaction's first statement
    (`Connection._start_query`). Here the connection is in autocommit mode for this checkout
    (SQLAlchemy restores the mode when the connection goes back to the pool), so psycopg sends
    no BEGIN of its own, and the transaction is opened by ours, in the same message as the
    context. Every later statement runs inside it; SQLAlchemy's commit and rollback reach
    psycopg, which sends COMMIT or ROLLBACK whenever the server says a transaction is open
    (it looks at the server's transaction status, not at the autocommit flag).
    """
    begin = begin_in_tenant_sql(tenant_id)  # refuses anything but a UUID before any I/O
    connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    _context, changes = tuple((await connection.exec_driver_sql(begin)).one())
    return int(changes)


async def become_admin(session: AsyncSession) -> None:
    """Switch the current transaction to the provisioning role (admin code paths only)."""
    await session.execute(_SET_ADMIN_ROLE)
