"""Row-Level Security as app_runtime: each tenant sees and writes only its own rows."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import admin_transaction, tenant_transaction
from app.models import AuditLog, Document, Tenant, User
from testkit import database_harness as harness
from testkit.database_harness import sqlstate
from testkit.factories import ProvisionedTenant, insert_row, make_document, provision_tenant
from tests.conftest import MigratedDatabase

INSUFFICIENT_PRIVILEGE = "42501"  # both "permission denied" and "violates row-level security"
TABLES = ("tenants", "users", "documents", "audit_logs")


@pytest.fixture
async def two_tenants(
    admin_sessions: async_sessionmaker[AsyncSession],
) -> tuple[ProvisionedTenant, ProvisionedTenant]:
    """Tenants A and B, each with two users and three documents."""
    first = await provision_tenant(admin_sessions, users=2, documents=3)
    second = await provision_tenant(admin_sessions, users=2, documents=3)
    return first, second


async def _count(session: AsyncSession, table: str) -> int:
    return int((await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())  # noqa: S608


async def test_users_of_another_tenant_are_invisible(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    first, second = two_tenants
    async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
        by_id = await session.scalar(select(User).where(User.id == second.user_ids[0]))
        by_tenant = (
            await session.scalars(select(User.id).where(User.tenant_id == second.tenant_id))
        ).all()
        tenants_seen = set((await session.scalars(select(User.tenant_id))).all())
    assert by_id is None
    assert by_tenant == []
    assert tenants_seen == {first.tenant_id}


async def test_documents_of_another_tenant_are_invisible(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    first, second = two_tenants
    async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
        assert await session.get(Document, second.document_ids[0]) is None
        leaked = (
            await session.scalars(select(Document.id).where(Document.id.in_(second.document_ids)))
        ).all()
        tenants_seen = set((await session.scalars(select(Document.tenant_id))).all())
        tenant_rows = (await session.scalars(select(Tenant.id))).all()
    assert leaked == []
    assert tenants_seen == {first.tenant_id}
    assert tenant_rows == [first.tenant_id]  # a tenant reads its own row and no other


async def test_writing_a_row_into_another_tenant_is_refused(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    first, second = two_tenants
    attempts = {
        "users": User(tenant_id=second.tenant_id, email=f"{uuid.uuid4().hex}@example.org"),
        "documents": Document(
            tenant_id=second.tenant_id,
            user_id=second.user_ids[0],
            s3_bucket="b",
            s3_key="k",
            filename="f.pdf",
            content_type="application/pdf",
            size_bytes=1,
        ),
        "audit_logs": AuditLog(tenant_id=second.tenant_id, action="x.y", resource_type="x"),
    }
    for table, row in attempts.items():
        with pytest.raises(ProgrammingError) as refused:
            await insert_row(runtime_sessions, first.tenant_id, row)
        assert sqlstate(refused.value) == INSUFFICIENT_PRIVILEGE
        assert f'new row violates row-level security policy for table "{table}"' in str(
            refused.value.orig
        )


async def test_same_tenant_reads_and_writes_its_own_rows(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    first, _ = two_tenants
    async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
        user = await session.get_one(User, first.user_ids[1])
        added = await make_document(session, user, filename="new.pdf")
        renamed = await session.get_one(Document, first.document_ids[0])
        renamed.filename = "renamed.pdf"
        await AuditLog.create(
            session, tenant_id=first.tenant_id, action="document.update", resource_type="document"
        )
    async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
        ids = set((await session.scalars(select(Document.id))).all())
        names = {d.id: d.filename for d in await session.scalars(select(Document))}
        audit = (await session.scalars(select(AuditLog.action))).all()
        users = set((await session.scalars(select(User.id))).all())
    assert ids == {*first.document_ids, added.id}
    assert names[first.document_ids[0]] == "renamed.pdf"
    assert audit == ["document.update"]
    assert users == set(first.user_ids)


async def test_missing_context_sees_no_rows_and_cannot_write(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    first, _ = two_tenants
    # No context at all, and an explicitly empty one (what a pooled connection carries after a
    # transaction that had one): both read as NULL, which matches no row.
    for setup in ("SELECT 1", "SELECT set_config('app.current_tenant_id', '', true)"):
        async with runtime_sessions() as session, session.begin():
            await session.execute(text(setup))
            assert {table: await _count(session, table) for table in TABLES} == dict.fromkeys(
                TABLES, 0
            )
    inserts = {
        "users": User(tenant_id=first.tenant_id, email=f"{uuid.uuid4().hex}@example.org"),
        "documents": Document(
            tenant_id=first.tenant_id,
            user_id=first.user_ids[0],
            s3_bucket="b",
            s3_key="k",
            filename="f.pdf",
            content_type="application/pdf",
            size_bytes=1,
        ),
        "audit_logs": AuditLog(tenant_id=first.tenant_id, action="x.y", resource_type="x"),
    }
    for table, row in inserts.items():
        with pytest.raises(ProgrammingError) as refused:
            await insert_row(runtime_sessions, None, row)
        assert sqlstate(refused.value) == INSUFFICIENT_PRIVILEGE
        assert f'row-level security policy for table "{table}"' in str(refused.value.orig)
    # tenants: the runtime role may not insert at all, context or not.
    with pytest.raises(ProgrammingError) as denied:
        await insert_row(runtime_sessions, None, Tenant(name="sneaky"))
    assert sqlstate(denied.value) == INSUFFICIENT_PRIVILEGE
    assert "permission denied for table tenants" in str(denied.value.orig)


async def test_soft_deleted_rows_stay_isolated(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    first, second = two_tenants
    for tenant in (first, second):
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            (await session.get_one(Document, tenant.document_ids[0])).soft_delete()
            (await session.get_one(User, tenant.user_ids[1])).soft_delete()
    async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
        deleted_docs = (await session.scalars(Document.deleted_query())).all()
        active_docs = (await session.scalars(Document.active_query())).all()
        deleted_users = (await session.scalars(User.deleted_query())).all()
        everything = (
            await session.execute(select(func.count()).select_from(Document))
        ).scalar_one()
    assert [d.id for d in deleted_docs] == [first.document_ids[0]]
    assert {d.id for d in active_docs} == set(first.document_ids[1:])
    assert [u.id for u in deleted_users] == [first.user_ids[1]]
    assert everything == len(first.document_ids)


async def test_row_of_another_tenant_cannot_be_read_updated_or_soft_deleted_by_id(
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    first, second = two_tenants
    target_doc, target_user = second.document_ids[0], second.user_ids[0]
    async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
        read = await session.execute(
            text("SELECT id FROM documents WHERE id = :id"), {"id": target_doc}
        )
        assert read.all() == []
        for statement in (
            "UPDATE documents SET filename = 'pwned.pdf' WHERE id = :id",
            "UPDATE documents SET deleted_at = now() WHERE id = :id",
        ):
            result = await session.execute(text(statement), {"id": target_doc})
            assert result.rowcount == 0  # type: ignore[attr-defined]
        for statement in (
            "UPDATE users SET full_name = 'pwned' WHERE id = :id",
            "UPDATE users SET deleted_at = now() WHERE id = :id",
        ):
            result = await session.execute(text(statement), {"id": target_user})
            assert result.rowcount == 0  # type: ignore[attr-defined]
    # Hard deletes are not even a privilege of the runtime role (rows are soft-deleted).
    for table, row_id in (("documents", target_doc), ("users", target_user)):
        with pytest.raises(ProgrammingError) as denied:
            async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
                await session.execute(text(f"DELETE FROM {table} WHERE id = :id"), {"id": row_id})  # noqa: S608
        assert sqlstate(denied.value) == INSUFFICIENT_PRIVILEGE
    async with admin_transaction(admin_sessions) as session:
        document = await session.get_one(Document, target_doc)
        user = await session.get_one(User, target_user)
    assert (document.filename, document.deleted_at) == ("report.pdf", None)
    assert (user.full_name, user.deleted_at) == (None, None)


async def test_moving_a_row_to_another_tenant_is_refused(
    runtime_sessions: async_sessionmaker[AsyncSession],
    migrated_db: MigratedDatabase,
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    first, second = two_tenants
    # Layer 1: tenant_id is not among the columns app_runtime may UPDATE.
    for table, row_id in (("users", first.user_ids[0]), ("documents", first.document_ids[0])):
        with pytest.raises(DBAPIError) as denied:
            async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
                await session.execute(
                    text(f"UPDATE {table} SET tenant_id = :other WHERE id = :id"),  # noqa: S608
                    {"other": second.tenant_id, "id": row_id},
                )
        assert sqlstate(denied.value) == INSUFFICIENT_PRIVILEGE
        assert f"permission denied for table {table}" in str(denied.value.orig)
    # Layer 2: even with that privilege, the policies' WITH CHECK refuses the moved row.
    # (Granted inside a transaction that is rolled back, so the schema is left as it was.)
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as conn:
        for table in ("users", "documents"):
            conn.execute(f"GRANT UPDATE (tenant_id) ON {table} TO app_runtime")
        conn.execute("SET LOCAL ROLE app_runtime")
        conn.execute(
            "SELECT set_config('app.current_tenant_id', %s, true)", (str(first.tenant_id),)
        )
        for table, row_id in (("documents", first.document_ids[0]), ("users", first.user_ids[1])):
            conn.execute("SAVEPOINT attempt")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                conn.execute(
                    f"UPDATE {table} SET tenant_id = %s WHERE id = %s",  # noqa: S608
                    (second.tenant_id, row_id),
                )
            assert f'new row violates row-level security policy for table "{table}"' in str(
                refused.value
            )
            conn.execute("ROLLBACK TO SAVEPOINT attempt")
        conn.rollback()
    async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
        assert await session.get(Document, first.document_ids[0]) is not None
        assert await session.get(User, first.user_ids[1]) is not None
