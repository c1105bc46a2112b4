"""Tenant key rotation: new key material for a tenant, every data key rewrapped, old versions
retired; the content itself is never re-encrypted (docs/ENCRYPTION.md, "Rotation").

1. The key manager makes a new version of the tenant's key current (new uploads use it).
2. Every wrapped data key of the tenant (soft-deleted documents included: their content is
   kept) is rewrapped inside the key manager under that version, in batches, each batch in a
   transaction of its own with one audit row per document. The plaintext data key never
   leaves the key manager.
3. Once no wrapped key of an older version is left, the older versions are retired: they no
   longer unwrap anything (OpenBao: min_decryption_version and trim; AWS KMS keeps every
   backing key, so nothing is retired there).

Runs as the provisioning role, batch by batch, so it owns its transactions like the upload.
Running it again is safe: it rotates once more and rewraps what is not yet under the new version.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import or_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.key_manager import EncryptionContext, KeyManager
from app.core.errors import ConflictError
from app.database.session import admin_transaction
from app.models import Document
from app.services import audit
from app.services import tenants as tenants_service
from app.services.actor import Actor
from app.services.documents import DOCUMENTS

DEFAULT_BATCH_SIZE = 200


@dataclass(frozen=True)
class RotationReport:
    """What a rotation did."""

    tenant_id: uuid.UUID
    kms_key_arn: str
    key_version: int | None
    rewrapped: int


async def rotate_tenant_key(
    sessions: async_sessionmaker[AsyncSession],
    actor: Actor,
    tenant_id: uuid.UUID,
    keys: KeyManager,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> RotationReport:
    """Rotate the tenant's key, rewrap all its data keys, retire the old versions, audit it."""
    actor.require_admin()
    async with admin_transaction(sessions) as session:
        tenant = await tenants_service.get_tenant(session, actor, tenant_id)
        key_ref = tenant.kms_key_arn
    if key_ref is None:
        raise ConflictError(f"tenant {tenant_id} has no key; provision-tenant-key gives it one")
    await keys.rotate(key_ref)
    version = await keys.current_version(key_ref)
    rewrapped = 0
    after: uuid.UUID | None = None
    while True:
        async with admin_transaction(sessions) as session:
            batch = await _next_batch(session, tenant_id, version, after, batch_size)
            for document in batch:
                await _rewrap(session, actor, document, keys)
        if not batch:
            if after is None or version is None:
                break
            # One more pass from the start: an upload whose data key was made just before
            # the rotation may have committed behind the scan; retiring would strand it.
            after = None
            continue
        rewrapped += len(batch)
        after = batch[-1].id
    await keys.retire_old_versions(key_ref)
    async with admin_transaction(sessions) as session:
        tenant = await tenants_service.get_tenant(session, actor, tenant_id)
        await audit.record(session, actor, "tenant.rotate_key", tenant)
    return RotationReport(tenant_id, key_ref, version, rewrapped)


async def _next_batch(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    version: int | None,
    after: uuid.UUID | None,
    batch_size: int,
) -> list[Document]:
    """The next documents with content still to rewrap, locked, in id order."""
    statement = DOCUMENTS.in_tenant(tenant_id, include_deleted=True).where(
        Document.content_wrapped_key.is_not(None)
    )
    if after is not None:
        statement = statement.where(Document.id > after)
    if version is not None:
        # Versioned keys: only what is not yet under the new version (a re-run resumes).
        statement = statement.where(
            or_(Document.content_key_version.is_(None), Document.content_key_version < version)
        )
    statement = statement.order_by(Document.id).limit(batch_size).with_for_update()
    return list((await session.scalars(statement)).all())


async def _rewrap(
    session: AsyncSession, actor: Actor, document: Document, keys: KeyManager
) -> None:
    assert document.content_wrapped_key is not None
    assert document.content_key_ref is not None
    context = EncryptionContext(tenant_id=document.tenant_id, document_id=document.id)
    wrapped = await keys.rewrap(document.content_key_ref, document.content_wrapped_key, context)
    document.content_wrapped_key = wrapped
    document.content_key_version = keys.key_version(wrapped)
    await session.flush()
    await audit.record(
        session,
        actor.in_tenant(document.tenant_id),
        "document.key_rewrap",
        document,
        changed=["content_wrapped_key", "content_key_version"],
    )
