"""Sessions and transactions: tenant-scoped ones for requests, admin ones for provisioning."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.database.tenant_context import become_admin, set_tenant_context


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no implicit refresh I/O)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction with no tenant context yet: under RLS it sees nothing until a statement
    built by `tenant_context.scoped_to_tenant` sets it (the request path, app.api.deps)."""
    async with sessions() as session, session.begin():
        yield session


@asynccontextmanager
async def tenant_transaction(
    sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID
) -> AsyncIterator[AsyncSession]:
    """One transaction scoped to `tenant_id`: committed on success, rolled back on error."""
    async with sessions() as session, session.begin():
        await set_tenant_context(session, tenant_id)
        yield session


@asynccontextmanager
async def admin_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One transaction as the provisioning role (BYPASSRLS). Admin CLI and dev seeding only."""
    async with sessions() as session, session.begin():
        await become_admin(session)
        yield session
