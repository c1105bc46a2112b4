"""The retention purge: soft-deleted rows older than the period are erased with their objects.

Rows deleted more recently, active rows, and deleted users who still own documents are kept;
each erased row gets an audit row; two purges at once erase each row exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.object_store import S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.database.session import admin_transaction
from app.models import AuditLog, Document, User
from app.services import tenant_lifecycle as lifecycle_service
from app.services.actor import Actor
from tests.test_lifecycle.conftest import objects_of, rows_of, seed_tenant

OPERATOR = Actor.operator()
RETENTION = timedelta(days=30)


async def _deleted_ago(
    admin_sessions: async_sessionmaker[AsyncSession], model: Any, ids: list[uuid.UUID], days: int
) -> None:
    async with admin_transaction(admin_sessions) as session:
        await session.execute(
            update(model)
            .where(model.id.in_(ids))
            .values(deleted_at=func.now() - timedelta(days=days))
        )


async def _purge(
    admin_sessions: async_sessionmaker[AsyncSession], store: S3ObjectStore, **options: Any
) -> lifecycle_service.PurgeReport:
    async def opened() -> S3ObjectStore:
        return store

    return await lifecycle_service.purge_deleted(
        admin_sessions, opened, OPERATOR, RETENTION, **options
    )


async def _purge_audits(
    admin_sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID
) -> Counter[tuple[str, uuid.UUID | None]]:
    async with admin_transaction(admin_sessions) as session:
        rows = await session.execute(
            select(AuditLog.action, AuditLog.resource_id).where(
                AuditLog.tenant_id == tenant_id, AuditLog.action.like("%.purge")
            )
        )
        return Counter((row.action, row.resource_id) for row in rows)


async def test_purge_erases_only_what_is_past_retention_with_its_objects(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    seeded = await seed_tenant(
        admin_sessions, runtime_sessions, object_store, key_manager, users=3, documents=4
    )
    old_doc, recent_doc, _active_doc, kept_doc = seeded.document_ids
    owner, old_user, recent_user = seeded.user_ids
    await _deleted_ago(admin_sessions, Document, [old_doc], days=31)
    await _deleted_ago(admin_sessions, Document, [recent_doc], days=29)
    # The owner of every document is deleted long ago too: kept while it owns documents.
    await _deleted_ago(admin_sessions, User, [owner, old_user], days=400)
    await _deleted_ago(admin_sessions, User, [recent_user], days=1)

    report = await _purge(admin_sessions, object_store)

    assert report.documents_purged >= 1
    assert report.users_purged >= 1
    rows = await rows_of(admin_sessions, seeded.tenant_id)
    assert {d["id"] for d in rows["documents"]} == {recent_doc, _active_doc, kept_doc}
    assert {u["id"] for u in rows["users"]} == {owner, recent_user}
    objects = await objects_of(object_store, seeded.object_keys)
    assert [key for key, data in objects.items() if data is None] == [seeded.object_keys[0]]
    assert await _purge_audits(admin_sessions, seeded.tenant_id) == Counter(
        {("document.purge", old_doc): 1, ("user.purge", old_user): 1}
    )
    assert report.users_kept_with_documents >= 1

    # Running it again finds nothing more of this tenant's to purge.
    await _purge(admin_sessions, object_store)
    assert await rows_of(admin_sessions, seeded.tenant_id) == rows


async def test_concurrent_purges_erase_each_row_exactly_once(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    seeded = await seed_tenant(
        admin_sessions,
        runtime_sessions,
        object_store,
        key_manager,
        users=1,
        documents=12,
        content_bytes=100,
    )
    await _deleted_ago(admin_sessions, Document, seeded.document_ids, days=90)

    reports = await asyncio.gather(
        *(_purge(admin_sessions, object_store, batch_rows=2) for _ in range(3))
    )

    assert sum(report.documents_purged for report in reports) == 12
    assert (await rows_of(admin_sessions, seeded.tenant_id))["documents"] == []
    audits = await _purge_audits(admin_sessions, seeded.tenant_id)
    assert audits == Counter({("document.purge", doc): 1 for doc in seeded.document_ids})
    assert set((await objects_of(object_store, seeded.object_keys)).values()) == {None}
