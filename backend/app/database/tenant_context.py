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

_SET_ADMIN_ROLE = text(f"SELECT set_config('role', '{ADMIN_ROLE}', true)")


def begin_in_tenant_sql(tenant_id: uuid.UUID) -> str:
    """`BEGIN` and the tenant context as one simple query (one round trip, no parameters).

    A simple query may hold several statements but no bound parameters, so the tenant id is a
    literal: only a `uuid.UUID` is accepted, whose text is 36 hex digits and dashes.
    """
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a uuid.UUID")
    return f"BEGIN; SELECT set_config('{TENANT_SETTING}', '{tenant_id}', true)"


async def enter_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Begin `session`'s transaction with the tenant context set, in one round trip.

    psycopg sends its own `BEGIN` as a round trip before a transaction's first statement
    (`Connection._start_query`). Here the connection is in autocommit mode for this checkout
    (SQLAlchemy restores the mode when the connection goes back to the pool), so psycopg sends
    no BEGIN of its own, and the transaction is opened by our `BEGIN`, in the same message as
    the context. Every later statement runs inside it; SQLAlchemy's commit and rollback reach
    psycopg, which sends COMMIT or ROLLBACK whenever the server says a transaction is open
    (it looks at the server's transaction status, not at the autocommit flag).
    """
    begin = begin_in_tenant_sql(tenant_id)  # refuses anything but a UUID before any I/O
    connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    await connection.exec_driver_sql(begin)


async def become_admin(session: AsyncSession) -> None:
    """Switch the current transaction to the provisioning role (admin code paths only)."""
    await session.execute(_SET_ADMIN_ROLE)
