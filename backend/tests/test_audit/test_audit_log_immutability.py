"""audit_logs is append-only: in the ORM, by privileges, and by triggers that bind even owners."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.database.session import tenant_transaction
from app.models import AuditLog, ImmutableAuditLogError
from testkit import database_harness as harness
from testkit.database_harness import sqlstate
from testkit.factories import ProvisionedTenant, provision_tenant
from tests.conftest import MigratedDatabase

MODIFICATIONS = {
    "UPDATE": "UPDATE audit_logs SET action = 'forged' WHERE id = %s",
    "DELETE": "DELETE FROM audit_logs WHERE id = %s",
    "TRUNCATE": "TRUNCATE audit_logs",
}


@pytest.fixture
async def audited(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> tuple[ProvisionedTenant, uuid.UUID]:
    """A tenant and one committed audit row of it."""
    tenant = await provision_tenant(admin_sessions)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        entry = await AuditLog.create(
            session,
            tenant_id=tenant.tenant_id,
            user_id=tenant.user_ids[0],
            action="document.create",
            resource_type="document",
        )
    return tenant, entry.id


def _stored_action(url: Any, entry_id: uuid.UUID) -> str | None:
    with psycopg.connect(harness.libpq(url)) as conn:
        row = conn.execute("SELECT action FROM audit_logs WHERE id = %s", (entry_id,)).fetchone()
    return row[0] if row else None


@contextmanager
def _statements_sent(engine: AsyncEngine) -> Iterator[list[str]]:
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_create_inserts_a_complete_row(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions)
    resource_id = uuid.uuid4()
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        entry = await AuditLog.create(
            session,
            tenant_id=tenant.tenant_id,
            user_id=tenant.user_ids[0],
            action="document.read",
            resource_type="document",
            resource_id=resource_id,
            ip_address="2001:db8::1",
            user_agent="pytest",
            metadata={"request_id": "abc"},
        )
        assert isinstance(entry.id, uuid.UUID)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        stored = await session.get_one(AuditLog, entry.id)
    assert (stored.action, stored.resource_type, stored.resource_id) == (
        "document.read",
        "document",
        resource_id,
    )
    assert stored.ip_address == ipaddress.ip_address("2001:db8::1")
    assert (stored.user_agent, stored.metadata_) == ("pytest", {"request_id": "abc"})
    assert stored.user_id == tenant.user_ids[0]
    assert stored.created_at is not None


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "TRUNCATE"])
def test_triggers_refuse_modification_even_for_the_superuser(
    migrated_db: MigratedDatabase,
    audited: tuple[ProvisionedTenant, uuid.UUID],
    operation: str,
) -> None:
    _, entry_id = audited
    statement = MODIFICATIONS[operation]
    parameters = (entry_id,) if "%s" in statement else None
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            conn.execute(statement, parameters)
        conn.rollback()
    assert f"audit_logs is append-only: {operation} is not allowed" in str(refused.value)
    assert _stored_action(migrated_db.superuser_url, entry_id) == "document.create"


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "TRUNCATE"])
def test_triggers_refuse_modification_by_the_table_owner(
    migrated_db: MigratedDatabase,
    audited: tuple[ProvisionedTenant, uuid.UUID],
    operation: str,
) -> None:
    _, entry_id = audited
    statement = MODIFICATIONS[operation]
    parameters = (entry_id,) if "%s" in statement else None
    with psycopg.connect(harness.libpq(migrated_db.owner_url)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (harness.MIGRATOR_ROLE,)
        if operation != "TRUNCATE":
            # Under FORCE the owner matches no policy, so its UPDATE/DELETE reach no row at all.
            assert conn.execute(statement, parameters).rowcount == 0
            # An owner who lifts FORCE (it may; rolled back below) still hits the trigger.
            conn.execute("ALTER TABLE audit_logs NO FORCE ROW LEVEL SECURITY")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            conn.execute(statement, parameters)
        conn.rollback()
    assert f"audit_logs is append-only: {operation} is not allowed" in str(refused.value)
    assert _stored_action(migrated_db.superuser_url, entry_id) == "document.create"


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "TRUNCATE"])
async def test_runtime_role_has_no_privilege_to_modify(
    runtime_sessions: async_sessionmaker[AsyncSession],
    audited: tuple[ProvisionedTenant, uuid.UUID],
    operation: str,
) -> None:
    tenant, entry_id = audited
    statement = MODIFICATIONS[operation].replace("%s", ":id")
    with pytest.raises(ProgrammingError) as denied:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            await session.execute(text(statement), {"id": entry_id})
    assert sqlstate(denied.value) == "42501"
    assert "permission denied for table audit_logs" in str(denied.value.orig)


async def test_orm_update_raises_before_reaching_the_database(
    runtime_engine: AsyncEngine,
    runtime_sessions: async_sessionmaker[AsyncSession],
    migrated_db: MigratedDatabase,
    audited: tuple[ProvisionedTenant, uuid.UUID],
) -> None:
    tenant, entry_id = audited

    async def tamper() -> None:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            entry = await session.get_one(AuditLog, entry_id)
            entry.metadata_ = {"tampered": True}
            await session.flush()

    with (
        _statements_sent(runtime_engine) as sent,
        pytest.raises(ImmutableAuditLogError, match="cannot be modified"),
    ):
        await tamper()
    assert sent  # the SELECT went out...
    assert not [s for s in sent if s.lstrip().upper().startswith("UPDATE")]  # ...no UPDATE did
    assert _stored_action(migrated_db.superuser_url, entry_id) == "document.create"


async def test_orm_delete_raises_before_reaching_the_database(
    runtime_engine: AsyncEngine,
    runtime_sessions: async_sessionmaker[AsyncSession],
    migrated_db: MigratedDatabase,
    audited: tuple[ProvisionedTenant, uuid.UUID],
) -> None:
    tenant, entry_id = audited

    async def remove() -> None:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            await session.delete(await session.get_one(AuditLog, entry_id))
            await session.flush()

    with (
        _statements_sent(runtime_engine) as sent,
        pytest.raises(ImmutableAuditLogError, match="cannot be deleted"),
    ):
        await remove()
    assert not [s for s in sent if s.lstrip().upper().startswith("DELETE")]
    assert _stored_action(migrated_db.superuser_url, entry_id) == "document.create"


async def test_select_is_scoped_to_the_tenant(
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    audited: tuple[ProvisionedTenant, uuid.UUID],
) -> None:
    tenant, entry_id = audited
    other = await provision_tenant(admin_sessions)
    async with tenant_transaction(runtime_sessions, other.tenant_id) as session:
        await AuditLog.create(
            session, tenant_id=other.tenant_id, action="user.login", resource_type="user"
        )
        others_view = (await session.scalars(select(AuditLog))).all()
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        own_view = (await session.scalars(select(AuditLog))).all()
        by_id = await session.get(AuditLog, others_view[0].id)
    assert [e.id for e in own_view] == [entry_id]
    assert [(e.tenant_id, e.action) for e in others_view] == [(other.tenant_id, "user.login")]
    assert by_id is None
