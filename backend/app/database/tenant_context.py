"""The one place that sets `app.current_tenant_id`, which every RLS policy reads.

The setting is transaction-local (`set_config(..., true)`), so it disappears at COMMIT or
ROLLBACK and a pooled connection never carries one request's tenant into the next.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, String, bindparam, func, select, text, true
from sqlalchemy.ext.asyncio import AsyncSession

from app.database.roles import ADMIN_ROLE

TENANT_SETTING = "app.current_tenant_id"

_SET_TENANT = text("SELECT set_config('app.current_tenant_id', :tenant_id, true)")
_SET_ADMIN_ROLE = text(f"SELECT set_config('role', '{ADMIN_ROLE}', true)")


async def set_tenant_context(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Scope the session's current transaction to `tenant_id` (must be called inside it)."""
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a uuid.UUID")
    await session.execute(_SET_TENANT, {"tenant_id": str(tenant_id)})


# The bound parameter a `scoped_to_tenant` statement takes the tenant in (see tenant_parameter).
CONTEXT_PARAMETER = "context_tenant_id"


def scoped_to_tenant(query: Select[*tuple[Any, ...]]) -> Select[*tuple[Any, ...]]:
    """`query` as one statement that first sets the tenant context: no round trip of its own.

    Build it once (module level) and execute it with `tenant_parameter(tenant_id)` among its
    parameters, as the first statement of a transaction opened without a context (the request
    path). The setting is made in a MATERIALIZED CTE, and `query` runs as a LATERAL subquery
    that refers to it, so PostgreSQL must produce the CTE's row (running `set_config`) before
    it starts `query` at all. That order matters: each RLS policy reads the setting through an
    InitPlan, evaluated once, when its scan first needs it, and the planner may hoist a
    policy's check into a one-time filter at the top of the query level it appears in. Inside
    the LATERAL subquery (kept a query level of its own by `OFFSET 0`), both happen after the
    setting is made; without either fence a join reads no rows at all.
    tests/test_rls/test_context_in_first_statement.py proves the order on the real server.
    `query` should select plain columns (rows come back with its column names) and keep its
    own explicit tenant filter.
    """
    tenant = bindparam(CONTEXT_PARAMETER, type_=String)
    context = (
        select(func.set_config(TENANT_SETTING, tenant, True).label("tenant_id"))
        .cte("tenant_context")
        .prefix_with("MATERIALIZED")
    )
    # The reference to the CTE is what makes the subquery LATERAL, i.e. run after the CTE.
    scoped = query.where(context.c.tenant_id == tenant).offset(0).lateral("scoped")
    return select(*scoped.c).select_from(context).join(scoped, true())


def tenant_parameter(tenant_id: uuid.UUID) -> dict[str, str]:
    """The parameter that gives a `scoped_to_tenant` statement its tenant."""
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a uuid.UUID")
    return {CONTEXT_PARAMETER: str(tenant_id)}


async def become_admin(session: AsyncSession) -> None:
    """Switch the current transaction to the provisioning role (admin code paths only)."""
    await session.execute(_SET_ADMIN_ROLE)
