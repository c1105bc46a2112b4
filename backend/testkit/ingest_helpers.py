"""Storing a document's content the way the content upload does, and running the worker.

Until the content routes land (issue 17), tests and the bench store content here with the
same pieces the upload uses: a fresh data key from the tenant's key, the envelope format, the
object store, the document's content columns, and the ingestion job enqueued in the same
tenant transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.backends import ContentBackends
from app.content.envelope import seal
from app.content.key_manager import EncryptionContext
from app.core.config import Settings
from app.database.session import tenant_transaction
from app.ingest.embeddings import Embedder, LocalEmbedder
from app.models import Document
from app.services import ingest, jobs


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def store_content(
    sessions: async_sessionmaker[AsyncSession],
    backends: ContentBackends,
    tenant_id: uuid.UUID,
    document_id: uuid.UUID,
    data: bytes,
    content_type: str,
) -> int:
    """Seal and store `data` as the document's content and enqueue its ingestion: the job id."""
    keys = await backends.key_manager()
    store = await backends.object_store()
    key_ref = await keys.create_tenant_key(tenant_id)
    context = EncryptionContext(tenant_id, document_id)
    sealed = await seal(keys, key_ref, context, _one(data))
    object_key = f"tenants/{tenant_id}/documents/{document_id}/{uuid.uuid4()}"
    await store.put_stream(object_key, sealed.chunks, content_type="application/octet-stream")
    async with tenant_transaction(sessions, tenant_id) as session:
        await session.execute(
            update(Document)
            .where(Document.tenant_id == tenant_id, Document.id == document_id)
            .values(
                content_type=content_type,
                content_object_key=object_key,
                content_wrapped_key=sealed.wrapped_key,
                content_key_ref=key_ref,
                content_sha256=hashlib.sha256(data).hexdigest(),
                content_uploaded_at=datetime.now(UTC),
                status="processing",
            )
        )
        return await jobs.enqueue_ingest(session, document_id)


def ingest_context(
    sessions: async_sessionmaker[AsyncSession],
    backends: ContentBackends,
    settings: Settings,
    embedder: Embedder | None = None,
) -> ingest.IngestContext:
    """What a worker holds, for tests and benches (the local model by default)."""
    return ingest.IngestContext(sessions, backends, embedder or LocalEmbedder(), settings)


async def drain_queue(
    settings: Settings, login_url: object, context: ingest.IngestContext, concurrency: int = 1
) -> None:
    """Run a worker until the queue has nothing left to do now (retries scheduled later wait)."""
    queue = jobs.build_queue(settings, login_url)  # type: ignore[arg-type]
    async with queue.open_async():
        await queue.run_worker_async(
            wait=False,
            concurrency=concurrency,
            install_signal_handlers=False,
            additional_context={jobs.CONTEXT_KEY: context},
        )
