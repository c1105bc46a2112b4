"""Documents of the caller's tenant: register, list, read, change, soft-delete, restore, search.

Every query starts from `DOCUMENTS.statement(actor)` (the tenant named explicitly; RLS in the
database holds even where a query forgets). Every change writes its audit row in the same
transaction.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer
from sqlalchemy.orm.attributes import set_committed_value

from app.content.backends import ContentBackends
from app.content.chunk_text import ChunkCipher
from app.content.key_manager import EncryptionContext, KeyManagerUnavailableError
from app.core.errors import ServiceUnavailableError
from app.database.vector_search import SearchFilters, SearchHit, search_parameters
from app.ingest.embeddings import Embedder, EmbeddingUnavailableError
from app.models import Document, DocumentChunk
from app.schemas.document import DocumentCreate, DocumentUpdate, SearchRequest
from app.services import audit
from app.services.actor import Actor
from app.services.kit import ListFilters, TenantScoped, restore, soft_delete
from app.services.pagination import CursorCodec, PageRequest

DOCUMENTS = TenantScoped(Document, "document")


@dataclass(frozen=True)
class DocumentQuery(ListFilters):
    """Filters for listing documents."""

    status: str | None = None
    content_type: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata_contains: dict[str, Any] | None = None
    include_deleted: bool = False


async def create_document(session: AsyncSession, actor: Actor, data: DocumentCreate) -> Document:
    """Register a document (status `processing`) and audit it."""
    document = Document(
        tenant_id=actor.own_tenant(),
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
    await audit.record(
        session, actor, "document.create", document, changed=data.model_fields_set | {"status"}
    )
    return document


async def get_document(
    session: AsyncSession,
    actor: Actor,
    document_id: uuid.UUID,
    *,
    include_deleted: bool = False,
    audit_read: bool = False,
) -> Document:
    """The document (deleted ones for admins who ask); its read audited when `audit_read`."""
    document = await DOCUMENTS.get_visible(
        session, actor, document_id, include_deleted=include_deleted
    )
    if audit_read:
        # HIPAA access logging, when enabled by a setting (AUDIT_DOCUMENT_READS).
        await audit.record(session, actor, "document.read", document)
    return document


async def list_documents(
    session: AsyncSession,
    actor: Actor,
    query: DocumentQuery,
    page: PageRequest,
    codec: CursorCodec,
) -> tuple[list[Document], str | None]:
    """One page of documents, newest first, and the cursor of the next page (None at the end)."""
    statement = DOCUMENTS.filtered(
        DOCUMENTS.visible(actor, include_deleted=query.include_deleted),
        {Document.status: query.status, Document.content_type: query.content_type},
        created_after=query.created_after,
        created_before=query.created_before,
    )
    if query.metadata_contains:
        # One bound JSONB parameter with @>, which the GIN index serves.
        statement = statement.where(Document.metadata_.contains(query.metadata_contains))
    return await DOCUMENTS.page(session, actor, statement, page, codec, query.fingerprint())


async def update_document(
    session: AsyncSession, actor: Actor, document_id: uuid.UUID, data: DocumentUpdate
) -> Document:
    """Apply the given fields and audit the names of those that changed."""
    document = await DOCUMENTS.get_or_404(session, actor, document_id)
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
        await audit.record(session, actor, "document.update", document, changed=changed)
    return document


async def delete_document(session: AsyncSession, actor: Actor, document_id: uuid.UUID) -> None:
    """Soft-delete the document and audit it."""
    document = await DOCUMENTS.get_or_404(session, actor, document_id)
    await soft_delete(session, actor, document, "document.delete")


async def restore_document(session: AsyncSession, actor: Actor, document_id: uuid.UUID) -> Document:
    """Restore a soft-deleted document (admins, like every way to reach deleted rows) and audit
    it; an active one is returned unchanged."""
    actor.require_admin()
    document = await DOCUMENTS.get_or_404(session, actor, document_id, include_deleted=True)
    # Idempotent, like restoring a user: an active document changes nothing, audits nothing.
    await restore(session, actor, document, "document.restore")
    return document


async def search_documents(
    session: AsyncSession, actor: Actor, request: SearchRequest
) -> list[SearchHit]:
    """The actor's tenant's nearest active documents (Document.similarity_search; RLS scopes it)."""
    filters = None
    if request.filters is not None:
        filters = SearchFilters(
            status=request.filters.status,
            content_type=request.filters.content_type,
            metadata_contains=request.filters.metadata or {},
        )
    assert request.embedding is not None, "text queries go through search_documents_by_text"
    return await Document.similarity_search(
        session, request.embedding, request.k, filters, tenant_id=actor.own_tenant()
    )


SEARCH_CHUNKS = text(
    "SELECT id, document_id, distance FROM search_document_chunks("
    "CAST(:query AS vector), :k, :exact_min_rows, :hnsw_min_share, :ef_search, :max_scan_tuples)"
)
# Chunks fetched per document wanted: a document's best chunk ranks it, and its other chunks
# crowd the list; bounded by the search function's reach.
CHUNKS_PER_RESULT = 5
MAX_CHUNKS_FETCHED = 500


@dataclass(frozen=True)
class TextHit:
    """A document found by text: its best chunk's distance and text."""

    document: Document
    distance: float
    snippet: str


async def search_documents_by_text(
    session: AsyncSession,
    actor: Actor,
    backends: ContentBackends,
    embedder: Embedder,
    query: str,
    k: int,
) -> list[TextHit]:
    """The tenant's `k` active documents whose best chunk is nearest `query`, nearest first.

    The query is embedded by the same model as the chunks; snippets are opened with each hit
    document's content key (one unwrap per hit, concurrently). A key manager or embedding
    service that does not answer is a 503 naming it.
    """
    try:
        vector = (await embedder.embed([query]))[0]
    except EmbeddingUnavailableError as exc:
        raise ServiceUnavailableError("embedding service unavailable") from exc
    parameters = {
        **search_parameters(vector, min(k * CHUNKS_PER_RESULT, MAX_CHUNKS_FETCHED), None),
    }
    best: dict[uuid.UUID, tuple[uuid.UUID, float]] = {}
    for chunk_id, document_id, distance in (await session.execute(SEARCH_CHUNKS, parameters)).all():
        if document_id not in best:
            best[document_id] = (chunk_id, float(distance))
        if len(best) == k:
            break
    if not best:
        return []
    documents = {
        d.id: d
        for d in (
            await session.execute(DOCUMENTS.statement(actor).where(Document.id.in_(best)))
        ).scalars()
    }
    chunks = {
        c.id: c
        for c in (
            await session.execute(
                select(DocumentChunk)
                .where(
                    DocumentChunk.tenant_id == actor.own_tenant(),
                    DocumentChunk.id.in_([chunk for chunk, _ in best.values()]),
                )
                .options(undefer(DocumentChunk.text_ciphertext))
            )
        ).scalars()
    }
    keys = await backends.key_manager()

    async def snippet(document: Document, chunk: DocumentChunk) -> str:
        context = EncryptionContext(document.tenant_id, document.id)
        data_key = await keys.unwrap(
            document.content_key_ref or "", document.content_wrapped_key or b"", context
        )
        return ChunkCipher(data_key, context).open(chunk.ordinal, chunk.text_ciphertext)

    found = [
        (documents[doc_id], chunks[chunk_id], distance)
        for doc_id, (chunk_id, distance) in best.items()
        if doc_id in documents and chunk_id in chunks
    ]
    try:
        texts = await asyncio.gather(*(snippet(d, c) for d, c, _ in found))
    except KeyManagerUnavailableError as exc:
        raise ServiceUnavailableError("key manager (KMS) unavailable") from exc
    return [
        TextHit(document=d, distance=distance, snippet=text_)
        for (d, _, distance), text_ in zip(found, texts, strict=True)
    ]
