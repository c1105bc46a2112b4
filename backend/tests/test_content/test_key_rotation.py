"""rotate-tenant-key end to end against OpenBao: every data key rewrapped under the new version
(deleted documents' too), the content objects untouched and still readable, the old version
retired so a key wrapped under it no longer opens, and each step audited."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.envelope import decrypt_stream
from app.content.key_manager import EncryptionContext, UnwrapError
from app.content.object_store import S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.errors import ConflictError
from app.database.session import admin_transaction
from app.models import AuditLog, Document
from app.services import key_rotation as key_rotation_service
from app.services.actor import Actor
from testkit.factories import document_with_content, give_tenant_key, make_tenant, make_user

OPERATOR = Actor.operator(source="test")


async def _rows(
    admin_sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID
) -> dict[uuid.UUID, Document]:
    async with admin_transaction(admin_sessions) as session:
        rows = await session.scalars(select(Document).where(Document.tenant_id == tenant_id))
        return {row.id: row for row in rows}


async def _plaintext(
    store: S3ObjectStore, keys: OpenBaoTransitKeyManager, document: Document
) -> bytes:
    assert document.content_object_key
    assert document.content_wrapped_key
    assert document.content_key_ref
    context = EncryptionContext(tenant_id=document.tenant_id, document_id=document.id)
    data_key = await keys.unwrap(document.content_key_ref, document.content_wrapped_key, context)
    sealed = await store.get_stream(document.content_object_key)
    return b"".join([chunk async for chunk in decrypt_stream(sealed, data_key, context)])


async def test_rotation_rewraps_every_data_key_and_retires_the_old_version(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    async with admin_transaction(admin_sessions) as session:
        tenant = await make_tenant(session)
        user = await make_user(session, tenant, role="admin")
        other_tenant = await make_tenant(session)
        other_user = await make_user(session, other_tenant, role="admin")
    await give_tenant_key(admin_sessions, key_manager, tenant.id)
    await give_tenant_key(admin_sessions, key_manager, other_tenant.id)
    contents = [os.urandom(size) for size in (0, 1000, 200_000)]
    for data in contents:
        await document_with_content(runtime_sessions, user, data, object_store, key_manager)
    theirs = await document_with_content(
        runtime_sessions, other_user, b"not rotated", object_store, key_manager
    )
    before = await _rows(admin_sessions, tenant.id)
    # A soft-deleted document's content is kept, so its key is rewrapped too.
    async with admin_transaction(admin_sessions) as session:
        deleted = await session.get(Document, next(iter(before)))
        assert deleted is not None
        deleted.soft_delete()
    objects_before = {
        row.id: await object_store.head(row.content_object_key or "") for row in before.values()
    }

    report = await key_rotation_service.rotate_tenant_key(
        admin_sessions, OPERATOR, tenant.id, key_manager, batch_size=2
    )

    assert (report.key_version, report.rewrapped) == (2, 3)
    after = await _rows(admin_sessions, tenant.id)
    for document_id, old in before.items():
        new = after[document_id]
        assert new.content_wrapped_key is not None
        assert new.content_wrapped_key.startswith(b"vault:v2:")
        assert new.content_key_version == 2
        # The content was not re-encrypted: same object, same bytes.
        assert new.content_object_key == old.content_object_key
        assert await object_store.head(new.content_object_key or "") == objects_before[document_id]
        assert await _plaintext(object_store, key_manager, new) in contents
        # The old version is retired: what it wrapped no longer opens.
        assert old.content_wrapped_key is not None
        assert old.content_key_ref is not None
        with pytest.raises(UnwrapError):
            await key_manager.unwrap(
                old.content_key_ref,
                old.content_wrapped_key,
                EncryptionContext(tenant_id=tenant.id, document_id=document_id),
            )
    # Another tenant's key and data keys are untouched.
    (their_row,) = (await _rows(admin_sessions, other_tenant.id)).values()
    assert their_row.content_wrapped_key == theirs.content_wrapped_key
    assert await _plaintext(object_store, key_manager, their_row) == b"not rotated"

    async with admin_transaction(admin_sessions) as session:
        actions = (
            await session.scalars(
                select(AuditLog.action)
                .where(AuditLog.tenant_id == tenant.id)
                .where(AuditLog.action.in_(["document.key_rewrap", "tenant.rotate_key"]))
            )
        ).all()
    assert sorted(actions) == ["document.key_rewrap"] * 3 + ["tenant.rotate_key"]

    # Again: a second rotation moves everything to version 3.
    again = await key_rotation_service.rotate_tenant_key(
        admin_sessions, OPERATOR, tenant.id, key_manager
    )
    assert (again.key_version, again.rewrapped) == (3, 3)


async def test_a_tenant_without_a_key_has_nothing_to_rotate(
    admin_sessions: async_sessionmaker[AsyncSession], key_manager: OpenBaoTransitKeyManager
) -> None:
    async with admin_transaction(admin_sessions) as session:
        tenant = await make_tenant(session)
    with pytest.raises(ConflictError, match="provision-tenant-key"):
        await key_rotation_service.rotate_tenant_key(
            admin_sessions, OPERATOR, tenant.id, key_manager
        )
