"""Sessions and transactions: the tenant-scoped one, and the admin one for provisioning.

`tenant_transaction` is the only way any code (requests, the CLI, workers, tests, benchmarks)
gets a tenant-scoped session: it begins and sets the tenant context in one round trip,
commits on success and rolls back on error. Services receive the session and never touch the
context.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.database.tenant_context import become_admin, begin_in_tenant_sql, enter_tenant

CALLER_CHANGES = "caller_changes"
"""`session.info` key: caller_change_seq's value as the tenant transaction began."""


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no implicit refresh I/O)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def tenant_transaction(
    sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID
) -> AsyncIterator[AsyncSession]:
    """One transaction scoped to `tenant_id`: committed on success, rolled back on error.

    `BEGIN` and the tenant context go to the server as one round trip, so the transaction
    costs no more round trips than an unscoped one (`enter_tenant`). The caller-change
    counter read in that round trip is `session.info[CALLER_CHANGES]`.
    """
    begin_in_tenant_sql(tenant_id)  # refuses anything but a UUID before any I/O
    async with sessions() as session, session.begin():
        session.info[CALLER_CHANGES] = await enter_tenant(session, tenant_id)
        yield session


@asynccontextmanager
async def admin_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One transaction as the provisioning role (BYPASSRLS). Admin CLI and dev seeding only."""
    async with sessions() as session, session.begin():
        await become_admin(session)
        yield session
