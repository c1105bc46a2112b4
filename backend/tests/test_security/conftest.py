"""Fixtures for the attack suite: two provisioned tenants, so that any leak would show."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database.engine import build_runtime_engine, targets_for
from app.database.session import admin_transaction, tenant_transaction
from app.models import AuditLog
from testkit import database_harness as harness
from testkit.factories import make_document, make_tenant, make_user
from tests.conftest import MakeCaller, MigratedDatabase
from tests.test_security.http_world import World, make_side

TENANT_TABLES = ("tenants", "users", "documents", "audit_logs")
"""Every table holding tenant data (the RLS-protected ones)."""

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class TenantRows:
    """One provisioned tenant and one row of each kind it owns."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    document_id: uuid.UUID
    audit_id: uuid.UUID
    filename: str


@dataclass(frozen=True)
class TwoTenants:
    """The attacker's tenant `a` and the victim tenant `b`."""

    a: TenantRows
    b: TenantRows


async def _provision(session: AsyncSession, label: str) -> TenantRows:
    tenant = await make_tenant(session, name=f"{label}-{uuid.uuid4().hex[:6]}")
    user = await make_user(session, tenant)
    filename = f"{label}-secret-{uuid.uuid4().hex[:8]}.pdf"
    document = await make_document(session, user, filename=filename)
    audit = await AuditLog.create(
        session,
        tenant_id=tenant.id,
        user_id=user.id,
        action="document.create",
        resource_type="document",
        resource_id=document.id,
    )
    return TenantRows(tenant.id, user.id, document.id, audit.id, filename)


@pytest.fixture
async def tenants(admin_sessions: async_sessionmaker[AsyncSession]) -> TwoTenants:
    """Two committed tenants, each with a user, a document and an audit row."""
    async with admin_transaction(admin_sessions) as session:
        a = await _provision(session, "a")
        b = await _provision(session, "b")
    return TwoTenants(a, b)


@pytest.fixture
def superuser(migrated_db: MigratedDatabase) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit superuser connection to the test database (test set-up and inspection)."""
    with psycopg.connect(harness.libpq(migrated_db.superuser_url), autocommit=True) as conn:
        yield conn


@pytest.fixture
async def single_connection_engine(
    settings: Settings, migrated_db: MigratedDatabase
) -> AsyncIterator[AsyncEngine]:
    """A fresh runtime engine with a pool of exactly one connection, so every checkout reuses it."""
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, settings, pool_size=1, max_overflow=0)
    yield engine
    await engine.dispose()


def sqlstate(error: DBAPIError) -> str | None:
    """The SQLSTATE of a database error raised through SQLAlchemy."""
    return getattr(error.orig, "sqlstate", None)


def message_shape(error: DBAPIError) -> str:
    """The server's message and detail with every UUID blanked, to compare error shapes."""
    diag = error.orig.diag  # type: ignore[union-attr]
    return _UUID.sub("<uuid>", f"{diag.message_primary} | {diag.message_detail}")


async def refused(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    statement: str,
    params: dict[str, Any] | None = None,
) -> DBAPIError:
    """Run `statement` in a fresh transaction of `tenant_id`; return the error it must raise."""
    with pytest.raises(DBAPIError) as caught:
        async with tenant_transaction(sessions, tenant_id) as session:
            await session.execute(text(statement), params or {})
    return caught.value


async def admin_scalar(
    admin_sessions: async_sessionmaker[AsyncSession],
    statement: str,
    params: dict[str, Any] | None = None,
) -> Any:
    """One value read as the provisioning role (BYPASSRLS), to check what is really stored."""
    async with admin_transaction(admin_sessions) as session:
        return (await session.execute(text(statement), params or {})).scalar()


@pytest.fixture
async def world(client: httpx.AsyncClient, make_caller: MakeCaller) -> World:
    """Two tenants, each with an admin, a member, an active and a soft-deleted document."""
    return World(
        await make_side(client, make_caller, "a"), await make_side(client, make_caller, "b")
    )
