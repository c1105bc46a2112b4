"""The ingestion job's work: a document's stored content to searchable, encrypted chunks.

Run by the worker (app/services/jobs.py) for one (tenant, document), always as app_runtime in
tenant transactions (`tenant_transaction`), so RLS holds in the worker as in a request:

1. read the document (its tenant's, active, with content) in a short transaction;
2. outside any transaction: unwrap the content's data key, stream-decrypt the object,
   extract its text (app/ingest/extract.py), split it (app/ingest/chunking.py), embed the
   chunks, and seal each chunk's text (app/content/chunk_text.py);
3. in one transaction, with the document locked and its content unchanged since step 1:
   replace the document's chunks (purge_document_chunks(), then insert), set `status`,
   `status_reason` and `chunk_count`, and write the audit row.

Idempotent: a re-run replaces the chunks with the same ones. A document whose text can't be
read (unsupported type, damaged PDF) ends `failed` with the reason, and the job succeeds (a
retry would fail the same way); a passing failure (storage, KMS, database) raises, and the
queue retries with backoff until the last attempt, which marks the document `failed`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.backends import ContentBackends
from app.content.chunk_text import ChunkCipher
from app.content.envelope import decrypt_stream
from app.content.key_manager import EncryptionContext
from app.core.config import Settings
from app.database.session import tenant_transaction
from app.ingest import chunking
from app.ingest.embeddings import Embedder
from app.ingest.extract import ExtractionError, extract
from app.models import Document, DocumentChunk
from app.services import audit
from app.services.actor import Actor

WORKER_SOURCE = "ingest-worker"
REASON_LIMIT = 1000


class Outcome(StrEnum):
    """What a run did."""

    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"  # no such active document of the tenant, no content, or it changed


@dataclass(frozen=True)
class IngestContext:
    """What a worker holds for every job: runtime sessions, content backends, the embedder."""

    sessions: async_sessionmaker[AsyncSession]
    backends: ContentBackends
    embedder: Embedder
    settings: Settings


@dataclass(frozen=True)
class _Snapshot:
    object_key: str
    wrapped_key: bytes
    key_ref: str
    sha256: str
    content_type: str


def _actor(tenant_id: uuid.UUID) -> Actor:
    return Actor.operator(tenant_id, source=WORKER_SOURCE)


async def _locked_document(
    session: AsyncSession, tenant_id: uuid.UUID, document_id: uuid.UUID
) -> Document | None:
    statement = (
        select(Document)
        .where(
            Document.tenant_id == tenant_id,
            Document.id == document_id,
            Document.deleted_at.is_(None),
        )
        .with_for_update()
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def _snapshot(
    context: IngestContext, tenant_id: uuid.UUID, document_id: uuid.UUID
) -> _Snapshot | None:
    async with tenant_transaction(context.sessions, tenant_id) as session:
        document = await _locked_document(session, tenant_id, document_id)
        if (
            document is None
            or document.content_object_key is None
            or document.content_wrapped_key is None
            or document.content_key_ref is None
            or document.content_sha256 is None
        ):
            return None
        return _Snapshot(
            document.content_object_key,
            document.content_wrapped_key,
            document.content_key_ref,
            document.content_sha256,
            document.content_type,
        )


async def _finish(
    context: IngestContext,
    tenant_id: uuid.UUID,
    document_id: uuid.UUID,
    sha256: str | None,
    *,
    status: str,
    reason: str | None,
    chunks: list[DocumentChunk],
) -> Outcome:
    """Write the outcome if the document still holds the content the run read."""
    async with tenant_transaction(context.sessions, tenant_id) as session:
        document = await _locked_document(session, tenant_id, document_id)
        if document is None or (sha256 is not None and document.content_sha256 != sha256):
            return Outcome.SKIPPED  # deleted, or new content whose own job will run
        await session.execute(select(func.purge_document_chunks(document_id)))
        session.add_all(chunks)
        document.status = status
        document.status_reason = reason[:REASON_LIMIT] if reason else None
        document.chunk_count = len(chunks) if status == "completed" else None
        await session.flush()
        await audit.record(
            session,
            _actor(tenant_id),
            "document.ingest",
            document,
            changed=["status", "status_reason", "chunk_count"],
        )
    return Outcome(status)


async def mark_failed(
    context: IngestContext, tenant_id: uuid.UUID, document_id: uuid.UUID, reason: str
) -> Outcome:
    """End a document as `failed` with `reason` (its chunks removed), whatever its content."""
    return await _finish(
        context, tenant_id, document_id, None, status="failed", reason=reason, chunks=[]
    )


async def _plaintext(
    context: IngestContext, tenant_id: uuid.UUID, document_id: uuid.UUID, snapshot: _Snapshot
) -> tuple[bytes, bytes]:
    keys = await context.backends.key_manager()
    store = await context.backends.object_store()
    encryption = EncryptionContext(tenant_id, document_id)
    data_key = await keys.unwrap(snapshot.key_ref, snapshot.wrapped_key, encryption)
    sealed = await store.get_stream(snapshot.object_key)
    plaintext = bytearray()
    async for piece in decrypt_stream(sealed, data_key, encryption):
        plaintext += piece
    return bytes(plaintext), data_key


async def ingest_document(
    context: IngestContext, tenant_id: uuid.UUID, document_id: uuid.UUID
) -> Outcome:
    """Extract, chunk, embed and store one document's content (see the module's docstring)."""
    snapshot = await _snapshot(context, tenant_id, document_id)
    if snapshot is None:
        return Outcome.SKIPPED
    settings = context.settings
    plaintext, data_key = await _plaintext(context, tenant_id, document_id, snapshot)
    try:
        extracted = extract(plaintext, snapshot.content_type, settings.INGEST_MAX_TEXT_CHARS)
    except ExtractionError as exc:
        return await _finish(
            context,
            tenant_id,
            document_id,
            snapshot.sha256,
            status="failed",
            reason=exc.reason,
            chunks=[],
        )
    del plaintext
    pieces, cut = chunking.split(
        extracted.text,
        settings.INGEST_CHUNK_CHARS,
        settings.INGEST_CHUNK_OVERLAP_CHARS,
        settings.INGEST_MAX_CHUNKS,
    )
    notes = []
    if not pieces:
        notes.append("no text found: nothing to search")
    if extracted.truncated or cut:
        notes.append(
            f"only the first {pieces[-1].end if pieces else 0} characters are searchable"
            f" (limits: {settings.INGEST_MAX_TEXT_CHARS} characters, {settings.INGEST_MAX_CHUNKS}"
            " chunks)"
        )
    vectors = await context.embedder.embed([piece.text for piece in pieces])
    cipher = ChunkCipher(data_key, EncryptionContext(tenant_id, document_id))
    embedder = context.embedder
    rows = [
        DocumentChunk(
            tenant_id=tenant_id,
            document_id=document_id,
            ordinal=piece.ordinal,
            start_char=piece.start,
            end_char=piece.end,
            text_ciphertext=cipher.seal(piece.ordinal, piece.text),
            embedding=vector,
            embedding_provider=embedder.provider,
            embedding_model=embedder.model,
            embedding_dimensions=embedder.native_dimensions,
        )
        for piece, vector in zip(pieces, vectors, strict=True)
    ]
    return await _finish(
        context,
        tenant_id,
        document_id,
        snapshot.sha256,
        status="completed",
        reason="; ".join(notes) or None,
        chunks=rows,
    )
