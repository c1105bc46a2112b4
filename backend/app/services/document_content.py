"""Document content: streamed upload, encrypted under the tenant's own key, and download.

An upload runs in three steps, so that no database transaction stays open while the body
streams in (a slow client would hold a pooled connection and run into PostgreSQL's
idle_in_transaction_session_timeout):

1. `begin_upload` (a short tenant transaction): the document is the caller's tenant's, active,
   still `processing` and without content; the declared type and length match what was
   registered; the tenant has a key.
2. `store_content` (no transaction): a fresh data key from the key manager, bound to the tenant
   and the document; the body sealed segment by segment (app.content.envelope) into a new
   object whose key names the tenant and the document; SHA-256 and length counted on the way.
   A body shorter or longer than registered fails before the object is complete, so none is.
3. `finish_upload` (a second short tenant transaction): the row is locked and checked again (a
   concurrent upload or delete wins), its content columns set, its ingestion job queued
   (app/services/jobs.py; the worker then moves it to `completed` or `failed`), and the write
   audited, all in that same transaction.

If step 3 fails, the object is deleted; if the process dies between steps 2 and 3, the object
is an orphan no row points at, which `sweep_orphans` deletes. So a stored object is readable
only once its row says so, and a row says so only once its object is complete.

`upload_content` runs the three steps; it owns its transactions (the exception to "services
never commit", for the reason above), through the one tenant-transaction primitive.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.backends import ContentBackends
from app.content.envelope import decrypt_stream, seal
from app.content.key_manager import EncryptionContext, KeyManager
from app.content.object_store import ObjectNotFoundError, ObjectStore
from app.core.errors import (
    ConflictError,
    InvalidInputError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from app.database.base import utcnow
from app.database.session import tenant_transaction
from app.models import Document, Tenant
from app.services import audit, jobs
from app.services.actor import Actor
from app.services.documents import DOCUMENTS

OBJECT_KEY_PREFIX = "tenants/"
STORED_CONTENT_TYPE = "application/octet-stream"  # what the bucket holds is ciphertext
CONTENT_COLUMNS = (
    "content_object_key",
    "content_wrapped_key",
    "content_key_ref",
    "content_key_version",
    "content_sha256",
    "content_uploaded_at",
)


class ContentMissingError(ConflictError):
    """The document has no content yet (or its object is gone)."""


class ContentLengthError(InvalidInputError):
    """The body is not as long as the document's registered size."""


def object_key(tenant_id: uuid.UUID, document_id: uuid.UUID) -> str:
    """A fresh object key for one upload of a document: `tenants/<t>/documents/<d>/<upload>`."""
    return f"{OBJECT_KEY_PREFIX}{tenant_id}/documents/{document_id}/{uuid.uuid4().hex}"


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type, lowercased, without parameters (`; charset=...`)."""
    return (content_type or "").partition(";")[0].strip().lower()


@dataclass(frozen=True)
class UploadTarget:
    """What step 1 established: where the content goes and what it must be."""

    tenant_id: uuid.UUID
    document_id: uuid.UUID
    key_ref: str
    size_bytes: int
    object_key: str

    @property
    def context(self) -> EncryptionContext:
        """The encryption context the data key and the segments are bound to."""
        return EncryptionContext(tenant_id=self.tenant_id, document_id=self.document_id)


@dataclass(frozen=True)
class StoredContent:
    """What step 2 stored."""

    object_key: str
    wrapped_key: bytes
    key_version: int | None
    sha256: str


async def tenant_key_ref(session: AsyncSession, tenant_id: uuid.UUID) -> str:
    """The tenant's key reference (`tenants.kms_key_arn`); ConflictError when it has none."""
    key_ref = await session.scalar(select(Tenant.kms_key_arn).where(Tenant.id == tenant_id))
    if key_ref is None:
        raise ConflictError(
            "your tenant has no encryption key yet; an operator gives it one with"
            f" `python -m app provision-tenant-key --tenant {tenant_id}`"
        )
    return key_ref


def _check_uploadable(document: Document) -> None:
    if document.content_object_key is not None:
        raise ConflictError("this document already has content (content is written once)")
    if document.status != "processing":
        raise ConflictError(
            f"this document's status is {document.status}; content can be uploaded only while"
            " it is processing"
        )


async def begin_upload(
    session: AsyncSession,
    actor: Actor,
    document_id: uuid.UUID,
    *,
    declared_type: str | None,
    declared_length: int | None,
    max_bytes: int,
) -> UploadTarget:
    """Step 1: check the document, the declared type and length, and find the tenant's key."""
    if declared_length is not None and declared_length > max_bytes:
        raise PayloadTooLargeError(f"document content is limited to {max_bytes} bytes")
    document = await DOCUMENTS.get_or_404(session, actor, document_id)
    _check_uploadable(document)
    if media_type(declared_type) != media_type(document.content_type):
        raise UnsupportedMediaTypeError(
            f"this document was registered as {document.content_type}; send the content with"
            f" Content-Type: {document.content_type} (got {declared_type or 'none'})"
        )
    if document.size_bytes > max_bytes:
        raise PayloadTooLargeError(
            f"this document was registered with {document.size_bytes} bytes; document content"
            f" is limited to {max_bytes} bytes"
        )
    if declared_length is not None and declared_length != document.size_bytes:
        raise ContentLengthError(
            f"Content-Length is {declared_length} but this document was registered with"
            f" size_bytes {document.size_bytes}"
        )
    return UploadTarget(
        tenant_id=document.tenant_id,
        document_id=document.id,
        key_ref=await tenant_key_ref(session, document.tenant_id),
        size_bytes=document.size_bytes,
        object_key=object_key(document.tenant_id, document.id),
    )


async def store_content(
    target: UploadTarget,
    body: AsyncIterable[bytes],
    store: ObjectStore,
    keys: KeyManager,
) -> StoredContent:
    """Step 2: seal `body` under a fresh data key into a new object (no transaction open)."""
    digest = hashlib.sha256()

    async def counted() -> AsyncIterator[bytes]:
        received = 0
        async for chunk in body:
            received += len(chunk)
            if received > target.size_bytes:
                raise ContentLengthError(
                    f"the body is longer than the registered size_bytes {target.size_bytes}"
                )
            digest.update(chunk)
            yield chunk
        if received != target.size_bytes:
            raise ContentLengthError(
                f"the body has {received} bytes but this document was registered with"
                f" size_bytes {target.size_bytes}"
            )

    sealed = await seal(keys, target.key_ref, target.context, counted())
    await store.put_stream(target.object_key, sealed.chunks, content_type=STORED_CONTENT_TYPE)
    return StoredContent(
        object_key=target.object_key,
        wrapped_key=sealed.wrapped_key,
        key_version=keys.key_version(sealed.wrapped_key),
        sha256=digest.hexdigest(),
    )


async def finish_upload(
    session: AsyncSession, actor: Actor, target: UploadTarget, stored: StoredContent
) -> Document:
    """Step 3: lock and re-check the row, record the content, queue its ingestion, audit it.

    The document stays `processing` until the ingestion job (app/services/ingest.py) has made
    it searchable (`completed`) or found it unreadable (`failed`); the job is queued in this
    same transaction, so there is no job without content and no content without a job.
    """
    document = await DOCUMENTS.get_or_404(session, actor, target.document_id, for_update=True)
    _check_uploadable(document)
    document.content_object_key = stored.object_key
    document.content_wrapped_key = stored.wrapped_key
    document.content_key_ref = target.key_ref
    document.content_key_version = stored.key_version
    document.content_sha256 = stored.sha256
    document.content_uploaded_at = utcnow()
    await session.flush()
    await jobs.enqueue_ingest(session, document.id)
    await audit.record(session, actor, "document.content_upload", document, changed=CONTENT_COLUMNS)
    return document


async def upload_content(
    sessions: async_sessionmaker[AsyncSession],
    actor: Actor,
    document_id: uuid.UUID,
    body: AsyncIterable[bytes],
    *,
    declared_type: str | None,
    declared_length: int | None,
    max_bytes: int,
    content: ContentBackends,
) -> Document:
    """Store a document's content, encrypted, and queue its ingestion (the three steps above).

    The object store and key manager are opened only once step 1 accepted the request."""
    tenant_id = actor.own_tenant()
    async with tenant_transaction(sessions, tenant_id) as session:
        target = await begin_upload(
            session,
            actor,
            document_id,
            declared_type=declared_type,
            declared_length=declared_length,
            max_bytes=max_bytes,
        )
    store = await content.object_store()
    stored = await store_content(target, body, store, await content.key_manager())
    try:
        async with tenant_transaction(sessions, tenant_id) as session:
            return await finish_upload(session, actor, target, stored)
    except BaseException:
        # No row points at it: delete it now (the orphan sweep would, later).
        await store.delete(stored.object_key)
        raise


@dataclass(frozen=True)
class Download:
    """A document's content as it streams out: the row for the headers, the verified bytes."""

    document: Document
    chunks: AsyncIterator[bytes]


def _has_content(document: Document) -> tuple[str, bytes, str]:
    if (
        document.content_object_key is None
        or document.content_wrapped_key is None
        or document.content_key_ref is None
    ):
        raise ContentMissingError("this document has no content yet (upload it with PUT)")
    return document.content_object_key, document.content_wrapped_key, document.content_key_ref


async def get_document_with_content(
    session: AsyncSession, actor: Actor, document_id: uuid.UUID
) -> Document:
    """The caller's tenant's active document that has content (ContentMissingError if not)."""
    document = await DOCUMENTS.get_or_404(session, actor, document_id)
    _has_content(document)
    return document


async def open_download(
    session: AsyncSession,
    actor: Actor,
    document: Document,
    store: ObjectStore,
    keys: KeyManager,
) -> Download:
    """Unwrap the data key, open the object and verify its first segment, then audit the read
    in the caller's transaction: errors surface here, before any header is sent."""
    object_key_, wrapped_key, key_ref = _has_content(document)
    context = EncryptionContext(tenant_id=document.tenant_id, document_id=document.id)
    data_key = await keys.unwrap(key_ref, wrapped_key, context)
    try:
        sealed = await store.get_stream(object_key_)
    except ObjectNotFoundError:
        raise ContentMissingError("this document's content is missing from storage") from None
    plaintext = decrypt_stream(sealed, data_key, context)
    try:
        first = await anext(plaintext)
    except BaseException:
        await plaintext.aclose()  # type: ignore[attr-defined]
        await sealed.aclose()  # type: ignore[attr-defined]
        raise
    await audit.record(session, actor, "document.content_download", document)

    async def chunks() -> AsyncIterator[bytes]:
        yield first
        async for chunk in plaintext:
            yield chunk

    return Download(document=document, chunks=chunks())
