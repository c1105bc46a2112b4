"""SoftDeleteMixin: soft_delete/restore, the hybrids in Python and SQL, active/deleted queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import tenant_transaction
from app.models import Document, User
from testkit.factories import make_document, provision_tenant


async def test_soft_delete_sets_deleted_at_and_persists(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions, documents=1)
    before = datetime.now(UTC)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        document = await session.get_one(Document, tenant.document_ids[0])
        assert document.deleted_at is None
        document.soft_delete()
        first_stamp = document.deleted_at
        document.soft_delete()  # a second call keeps the first timestamp
        assert document.deleted_at == first_stamp
    assert first_stamp is not None
    assert before - timedelta(seconds=1) <= first_stamp <= datetime.now(UTC)

    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        stored = await session.scalar(
            select(Document.deleted_at).where(Document.id == tenant.document_ids[0])
        )
    assert stored == first_stamp


async def test_restore_clears_deleted_at(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions, documents=1)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        document = await session.get_one(Document, tenant.document_ids[0])
        document.soft_delete()
        await session.flush()
        document.restore()
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        stored = await session.get_one(Document, tenant.document_ids[0])
        assert stored.deleted_at is None
        assert stored.is_active


async def test_is_deleted_and_is_active_on_instances(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        user = await session.get_one(User, tenant.user_ids[0])
        assert (user.is_deleted, user.is_active) == (False, True)
        user.soft_delete()
        assert (user.is_deleted, user.is_active) == (True, False)
        user.restore()
        assert (user.is_deleted, user.is_active) == (False, True)


async def test_hybrids_and_queries_filter_in_sql(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        user = await session.get_one(User, tenant.user_ids[0])
        kept = [(await make_document(session, user)).id for _ in range(2)]
        gone = [(await make_document(session, user)).id for _ in range(3)]
        for document_id in gone:
            (await session.get_one(Document, document_id)).soft_delete()
        await session.flush()

        def ids(statement: object) -> set[object]:
            return {document.id for document in statement}  # type: ignore[attr-defined]

        by_hybrid_active = ids(await session.scalars(select(Document).where(Document.is_active)))
        by_hybrid_deleted = ids(await session.scalars(select(Document).where(Document.is_deleted)))
        by_active_query = ids(await session.scalars(Document.active_query()))
        by_deleted_query = ids(await session.scalars(Document.deleted_query()))

    assert by_hybrid_active == by_active_query == set(kept)
    assert by_hybrid_deleted == by_deleted_query == set(gone)
    compiled = str(Document.active_query().compile())
    assert "documents.deleted_at IS NULL" in compiled
    assert "documents.deleted_at IS NOT NULL" in str(Document.deleted_query().compile())
