"""The one place that sets `app.current_tenant_id`, which every RLS policy reads.

The setting is transaction-local (`set_config(..., true)`), so it disappears at COMMIT or
ROLLBACK and a pooled connection never carries one request's tenant into the next. Nothing
outside app/database/ calls into this module: code gets a tenant-scoped session from
`app.database.session.tenant_transaction`, which sets the context with the statements built
here, as the transaction's first statement.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, Select, String, bindparam, func, select, text, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

from app.database.roles import ADMIN_ROLE

TENANT_SETTING = "app.current_tenant_id"

_SET_TENANT = text("SELECT set_config('app.current_tenant_id', :context_tenant_id, true)")
_SET_ADMIN_ROLE = text(f"SELECT set_config('role', '{ADMIN_ROLE}', true)")

# The bound parameter the context-setting statements take the tenant in.
CONTEXT_PARAMETER = "context_tenant_id"
# Engine execution option (set from DATABASE_CITUS by the engine factory): on Citus, the context
# is also set with SET LOCAL, the only form Citus passes on to the workers that hold the shards
# (citus.propagate_set_commands = 'local'); set_config() calls are not propagated.
CITUS_OPTION = "tenant_docs_citus"


def scoped_to_tenant(query: Select[*tuple[Any, ...]]) -> Select[*tuple[Any, ...]]:
    """`query` as one statement that first sets the tenant context: no round trip of its own.

    The setting is made in a MATERIALIZED CTE, and `query` runs as a LATERAL subquery that
    refers to it, so PostgreSQL must produce the CTE's row (running `set_config`) before it
    starts `query` at all. That order matters: each RLS policy reads the setting through an
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


@dataclass(frozen=True)
class OpeningQuery:
    """A query a tenant transaction runs as its first statement, folded into the context.

    Build it once at module level (building a statement costs more than running it) and give
    `bind(...)` of it to `tenant_transaction(..., opening=...)`.
    """

    query: Select[*tuple[Any, ...]]
    statement: Select[*tuple[Any, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "statement", scoped_to_tenant(self.query))

    def bind(self, **parameters: Any) -> BoundOpening:
        """This query with its own parameters (the tenant is added by the transaction)."""
        return BoundOpening(self.statement, parameters)


@dataclass(frozen=True)
class BoundOpening:
    """An `OpeningQuery`'s statement with the values of its parameters."""

    statement: Executable
    parameters: Mapping[str, Any]


def tenant_parameter(tenant_id: uuid.UUID) -> dict[str, str]:
    """The parameter that gives a context-setting statement its tenant (a UUID, nothing else)."""
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a uuid.UUID")
    return {CONTEXT_PARAMETER: str(tenant_id)}


async def enter_tenant(
    session: AsyncSession, tenant_id: uuid.UUID, opening: BoundOpening | None
) -> Sequence[Row[Any]]:
    """Make the context this transaction's first statement; the opening query's rows, if any."""
    context = tenant_parameter(tenant_id)
    if session.sync_session.get_bind().get_execution_options().get(CITUS_OPTION):
        # SET takes no parameters: the tenant is a validated uuid.UUID, rendered by Python.
        await session.execute(text(f"SET LOCAL app.current_tenant_id = '{tenant_id}'"))
    if opening is None:
        await session.execute(_SET_TENANT, context)
        return ()
    result = await session.execute(opening.statement, {**opening.parameters, **context})
    return result.all()


async def become_admin(session: AsyncSession) -> None:
    """Switch the current transaction to the provisioning role (admin code paths only)."""
    await session.execute(_SET_ADMIN_ROLE)
