"""Many tenants, random probes and concurrency: no row ever crosses a tenant boundary."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import tenant_transaction
from app.models import AuditLog, Document, User
from testkit.database_harness import sqlstate
from testkit.factories import ProvisionedTenant, provision_tenant

TENANTS = 10
DOCUMENTS_EACH = 5


@pytest.fixture(scope="module")
async def ten_tenants(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> list[ProvisionedTenant]:
    """Ten tenants with two users, five documents and one audit row each."""
    tenants = [
        await provision_tenant(admin_sessions, users=2, documents=DOCUMENTS_EACH)
        for _ in range(TENANTS)
    ]
    for tenant in tenants:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            await AuditLog.create(
                session, tenant_id=tenant.tenant_id, action="tenant.seed", resource_type="tenant"
            )
    return tenants


async def _visible(session: AsyncSession) -> dict[str, set[uuid.UUID]]:
    """Ids of every row the session can see, per table (tenant ids for the tenant-keyed ones)."""
    return {
        "tenants": set((await session.scalars(text("SELECT id FROM tenants"))).all()),
        "users": set((await session.scalars(select(User.id))).all()),
        "documents": set((await session.scalars(select(Document.id))).all()),
        "audit_tenants": set((await session.scalars(select(AuditLog.tenant_id))).all()),
    }


async def test_ten_tenants_with_five_documents_each_see_exactly_their_own(
    runtime_sessions: async_sessionmaker[AsyncSession], ten_tenants: list[ProvisionedTenant]
) -> None:
    for tenant in ten_tenants:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            seen = await _visible(session)
        assert seen == {
            "tenants": {tenant.tenant_id},
            "users": set(tenant.user_ids),
            "documents": set(tenant.document_ids),
            "audit_tenants": {tenant.tenant_id},
        }
        assert len(seen["documents"]) == DOCUMENTS_EACH


async def test_random_probes_for_foreign_ids_find_nothing(
    runtime_sessions: async_sessionmaker[AsyncSession], ten_tenants: list[ProvisionedTenant]
) -> None:
    rng = random.Random(20251016)  # fixed seed: a failure is reproducible
    for _ in range(40):
        reader, owner = rng.sample(ten_tenants, 2)
        document_id = rng.choice(owner.document_ids)
        user_id = rng.choice(owner.user_ids)
        async with tenant_transaction(runtime_sessions, reader.tenant_id) as session:
            assert await session.get(Document, document_id) is None
            assert await session.get(User, user_id) is None
            found = await session.execute(
                text(
                    "SELECT d.id FROM documents d JOIN users u ON u.id = d.user_id"
                    " WHERE d.id = :doc OR u.id = :user OR d.tenant_id = :owner"
                ),
                {"doc": document_id, "user": user_id, "owner": owner.tenant_id},
            )
            assert found.all() == []


async def test_concurrent_queries_of_different_tenants_do_not_leak(
    runtime_sessions: async_sessionmaker[AsyncSession], ten_tenants: list[ProvisionedTenant]
) -> None:
    async def read_as(tenant: ProvisionedTenant) -> tuple[ProvisionedTenant, set[uuid.UUID]]:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            # Yield to the other tasks between setting the context and reading.
            await session.execute(text("SELECT pg_sleep(0.001)"))
            ids = set((await session.scalars(select(Document.id))).all())
        return tenant, ids

    rounds = [tenant for _ in range(5) for tenant in ten_tenants]
    random.Random(7).shuffle(rounds)
    results = await asyncio.gather(*(read_as(tenant) for tenant in rounds))
    assert len(results) == 5 * TENANTS
    for tenant, ids in results:
        assert ids == set(tenant.document_ids)


async def test_query_level_tenant_id_manipulation_cannot_widen_the_view(
    runtime_sessions: async_sessionmaker[AsyncSession], ten_tenants: list[ProvisionedTenant]
) -> None:
    me, other = ten_tenants[0], ten_tenants[1]
    all_tenant_ids = [str(t.tenant_id) for t in ten_tenants]
    attempts = [
        ("SELECT id FROM documents WHERE tenant_id = :other", {"other": other.tenant_id}),
        ("SELECT id FROM documents WHERE tenant_id = ANY(:all)", {"all": all_tenant_ids}),
        ("SELECT id FROM documents WHERE true OR tenant_id IS NULL", {}),
        ("SELECT id FROM documents UNION SELECT id FROM users", {}),
    ]
    async with tenant_transaction(runtime_sessions, me.tenant_id) as session:
        for statement, parameters in attempts:
            rows = set((await session.scalars(text(statement), parameters)).all())
            assert rows <= {*me.document_ids, *me.user_ids}, statement
        moved = await session.execute(
            text("UPDATE documents SET status = 'failed' WHERE tenant_id = :other"),
            {"other": other.tenant_id},
        )
        assert moved.rowcount == 0  # type: ignore[attr-defined]
    with pytest.raises(ProgrammingError) as denied:
        async with tenant_transaction(runtime_sessions, me.tenant_id) as session:
            await session.execute(
                text("UPDATE documents SET tenant_id = :other"), {"other": other.tenant_id}
            )
    assert sqlstate(denied.value) == "42501"


async def test_audit_logs_admit_only_insert_and_select(
    runtime_sessions: async_sessionmaker[AsyncSession], ten_tenants: list[ProvisionedTenant]
) -> None:
    tenant = ten_tenants[0]
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        commands = set(
            (
                await session.scalars(
                    text("SELECT cmd FROM pg_policies WHERE tablename = 'audit_logs'")
                )
            ).all()
        )
        entry = await AuditLog.create(
            session, tenant_id=tenant.tenant_id, action="document.read", resource_type="document"
        )
    assert commands == {"SELECT", "INSERT"}
    for statement in (
        "UPDATE audit_logs SET action = 'forged' WHERE id = :id",
        "DELETE FROM audit_logs WHERE id = :id",
        "TRUNCATE audit_logs",
    ):
        with pytest.raises(ProgrammingError) as denied:
            async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
                await session.execute(text(statement), {"id": entry.id})
        assert sqlstate(denied.value) == "42501", statement
        assert "permission denied for table audit_logs" in str(denied.value.orig)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        kept = await session.get_one(AuditLog, entry.id)
    assert kept.action == "document.read"
