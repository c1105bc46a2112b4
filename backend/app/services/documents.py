"""Documents of the caller's tenant: register, list, read, change, soft-delete, restore, search.

Every query names the tenant explicitly (readable, testable) and RLS in the database holds
even where a query forgets. Every change writes its audit row in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from app.core.context import RequestContext
from app.core.errors import ForbiddenError, NotFoundError
from app.models import Document
from app.schemas.document import DocumentCreate, DocumentUpdate
from app.services import vector_search
from app.services.audit import AuditActor, record_change
from app.services.pagination import CursorCodec, PageRequest, fetch_page, query_fingerprint

RESOURCE = "document"


@dataclass(frozen=True)
class DocumentQuery:
    """Filters for listing documents."""

    status: str | None = None
    content_type: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata_contains: dict[str, Any] | None = None
    include_deleted: bool = False

    def fingerprint(self) -> str:
        """Digest binding a cursor to these filters."""
        return query_fingerprint(
            {
                "status": self.status,
                "content_type": self.content_type,
                "created_after": self.created_after,
                "created_before": self.created_before,
                "metadata": self.metadata_contains,
                "include_deleted": self.include_deleted,
            }
        )


async def _audit(
    session: AsyncSession,
    actor: RequestContext,
    action: str,
    document: Document,
    changed: Iterable[str],
) -> None:
    """The change's audit row: names of the changed fields only, never their contents."""
    await record_change(
        session,
        AuditActor.from_request(actor),
        tenant_id=actor.tenant_id,
        action=action,
        resource_type=RESOURCE,
        resource_id=document.id,
        changed=changed,
    )


def _scoped(actor: RequestContext, *, include_deleted: bool = False) -> Select[Document]:
    if include_deleted and not actor.is_admin:
        # The routes check this first; repeated here so no service path can reach deleted rows
        # for a member (soft-deleted rows are for admins only: docs/SECURITY.md).
        raise ForbiddenError("soft-deleted documents are for admins only")
    statement = select(Document).where(Document.tenant_id == actor.tenant_id)
    if not include_deleted:
        statement = statement.where(Document.deleted_at.is_(None))
    return statement


async def create_document(
    session: AsyncSession, actor: RequestContext, data: DocumentCreate
) -> Document:
    """Register a document (status `processing`) and audit it."""
    document = Document(
        tenant_id=actor.tenant_id,
        user_id=actor.user_id,
        filename=data.filename,
        content_type=data.content_type,
        size_bytes=data.size_bytes,
        s3_bucket=data.s3_bucket,
        s3_key=data.s3_key,
        status="processing",
        metadata_=data.metadata,
        embedding_vector=data.embedding,
    )
    session.add(document)
    await session.flush()
    # has_embedding is a SQL expression; we know its value, so no query to read it back.
    set_committed_value(document, "has_embedding", data.embedding is not None)
    await _audit(session, actor, "document.create", document, data.model_fields_set | {"status"})
    return document


async def get_document(
    session: AsyncSession,
    actor: RequestContext,
    document_id: uuid.UUID,
    *,
    include_deleted: bool = False,
) -> Document:
    """The document, or NotFoundError (the same for another tenant's id as for a random one)."""
    statement = _scoped(actor, include_deleted=include_deleted).where(Document.id == document_id)
    document = (await session.execute(statement)).scalar_one_or_none()
    if document is None:
        raise NotFoundError("document not found")
    return document


async def list_documents(
    session: AsyncSession,
    actor: RequestContext,
    query: DocumentQuery,
    page: PageRequest,
    codec: CursorCodec,
) -> tuple[list[Document], str | None]:
    """One page of documents, newest first, and the cursor of the next page (None at the end)."""
    statement = _scoped(actor, include_deleted=query.include_deleted)
    if query.status is not None:
        statement = statement.where(Document.status == query.status)
    if query.content_type is not None:
        statement = statement.where(Document.content_type == query.content_type)
    if query.created_after is not None:
        statement = statement.where(Document.created_at >= query.created_after)
    if query.created_before is not None:
        statement = statement.where(Document.created_at < query.created_before)
    if query.metadata_contains:
        # One bound JSONB parameter with @>, which the GIN index serves.
        statement = statement.where(Document.metadata_.contains(query.metadata_contains))
    return await fetch_page(
        session, statement, Document, page, codec, actor.tenant_id, query.fingerprint()
    )


async def update_document(
    session: AsyncSession, actor: RequestContext, document_id: uuid.UUID, data: DocumentUpdate
) -> Document:
    """Apply the given fields and audit the names of those that changed."""
    document = await get_document(session, actor, document_id)
    changed: list[str] = []
    if "status" in data.model_fields_set and data.status != document.status:
        document.status = data.status  # type: ignore[assignment]
        changed.append("status")
    if "metadata" in data.model_fields_set and data.metadata != document.metadata_:
        document.metadata_ = data.metadata  # type: ignore[assignment]
        changed.append("metadata")
    if "embedding" in data.model_fields_set:
        document.embedding_vector = data.embedding
        set_committed_value(document, "has_embedding", data.embedding is not None)
        changed.append("embedding")
    if changed:
        await session.flush()
        await _audit(session, actor, "document.update", document, changed)
    return document


async def delete_document(
    session: AsyncSession, actor: RequestContext, document_id: uuid.UUID
) -> None:
    """Soft-delete the document and audit it."""
    document = await get_document(session, actor, document_id)
    document.soft_delete()
    await session.flush()
    await _audit(session, actor, "document.delete", document, ["deleted_at"])


async def restore_document(
    session: AsyncSession, actor: RequestContext, document_id: uuid.UUID
) -> Document:
    """Restore a soft-deleted document and audit it; an active one is returned unchanged."""
    document = await get_document(session, actor, document_id, include_deleted=True)
    if document.deleted_at is None:
        return document  # idempotent, like restoring a user: nothing changed, nothing audited
    document.restore()
    await session.flush()
    await _audit(session, actor, "document.restore", document, ["deleted_at"])
    return document


async def record_read(session: AsyncSession, actor: RequestContext, document_id: uuid.UUID) -> None:
    """Audit a read of a document (HIPAA access logging, when enabled by a setting)."""
    await record_change(
        session,
        AuditActor.from_request(actor),
        tenant_id=actor.tenant_id,
        action="document.read",
        resource_type=RESOURCE,
        resource_id=document_id,
    )


async def search_documents(
    session: AsyncSession,
    embedding: list[float],
    k: int,
    filters: vector_search.SearchFilters | None,
) -> list[vector_search.SearchHit]:
    """The transaction's tenant's nearest active documents (Document.similarity_search)."""
    return await Document.similarity_search(session, embedding, k, filters)
