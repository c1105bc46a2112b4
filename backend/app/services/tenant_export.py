"""Export everything a tenant owns as one streamed tar archive (format `tenant-export/1`).

The layout (docs/TENANT_LIFECYCLE.md has the full format):

    archive.json                       format, tenant, time, what each folder holds
    rows/<table>/part-000001.jsonl     the tenant's rows, table by table, one JSON object a line
    audit/chain/part-000001.jsonl      the audit chain: sequence, hashes, canonical fields
    audit/anchor.json                  the chain's head, signed with the anchor key (Ed25519)
    content/<document id>              each document's content, decrypted (when it has some)
    manifest.json                      SHA-256 and size of every file above; always last

Memory stays flat: rows are streamed from a server-side cursor and cut into parts of at most
PART_ROWS rows or PART_BYTES bytes (a tar header needs the size before the data), content is
decrypted segment by segment. The caller runs the generator inside one REPEATABLE READ
transaction, so every file describes the same moment, and the signed head is the last row of
the exported chain. Writing the `tenant.export` audit row is the caller's first step, in its
own transaction, before the snapshot: the archive contains its own export record.

One export of a tenant runs at a time, across every worker process, and a second one is
refused before it writes anything. Two of the tenant's advisory locks
(`app.database.advisory_locks`) hand the export on with no moment where neither is held:
`claim_export` holds the claim lock in a transaction of its own from before the audit row
(refused while another export holds the claim or streams), `take_export_stream` takes the
stream lock as the snapshot transaction's first step, and only then is the claim released.
The claim must outlive the request's transaction: the snapshot has to start after the audit
row is committed, and a lock taken in the request's transaction would be free in between.
PostgreSQL frees each lock when its transaction ends, however it ends.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import tarfile
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content import envelope
from app.content.key_manager import EncryptionContext, KeyManager
from app.content.object_store import ObjectStore
from app.core import metrics
from app.core.errors import TooManyRequestsError
from app.database.advisory_locks import LockClass, transaction_lock_free, try_transaction_lock
from app.database.session import tenant_transaction
from app.models import Document, Tenant, User
from app.services import audit
from app.services import audit_anchor as audit_anchor_service
from app.services import audit_integrity as audit_integrity_service
from app.services.actor import Actor
from app.services.tenants import TENANTS

ARCHIVE_FORMAT = "tenant-export/1"
PART_ROWS = 2000
PART_BYTES = 4 * 1024 * 1024
STREAM_ROWS = 500
# Documents opened ahead of the one being written. Each holds an object-store connection until
# it is written, also while a client stalls the stream (up to TENANT_EXPORT_IDLE_SECONDS): two,
# times TENANT_EXPORT_MAX_CONCURRENT exports, stays well inside the S3 client's pool of 10.
# Side by side (bench-lifecycle, docs/TENANT_LIFECYCLE.md), 2 did as well as 4 or 8.
CONTENT_PREFETCH = 2
_BLOCK = tarfile.BLOCKSIZE

# Table name -> (table, the column naming the tenant). Parents before children.
EXPORTED_TABLES: dict[str, tuple[Table, Any]] = {
    "tenants": (Tenant.__table__, Tenant.__table__.c.id),  # type: ignore[dict-item]
    "users": (User.__table__, User.__table__.c.tenant_id),  # type: ignore[dict-item]
    "documents": (Document.__table__, Document.__table__.c.tenant_id),  # type: ignore[dict-item]
}

ContentReader = Callable[[Any], Awaitable[AsyncIterator[bytes] | None]]
"""Opens a document row's decrypted content (None: the document has none)."""

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


class ExportError(RuntimeError):
    """The export could not be completed (the archive written so far is incomplete)."""


def json_value(value: Any) -> Any:
    """A database value as JSON: ids and times as strings, bytes base64, vectors as lists."""
    if isinstance(value, uuid.UUID | IPv4Address | IPv6Address | IPv4Network | IPv6Network):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if hasattr(value, "tolist"):  # pgvector's numpy array
        return value.tolist()
    raise TypeError(f"cannot export a {type(value).__name__}")


def _json_line(value: Any) -> bytes:
    return (
        json.dumps(value, default=json_value, ensure_ascii=False, sort_keys=True).encode() + b"\n"
    )


def tar_header(name: str, size: int, mtime: float) -> bytes:
    """The (PAX) tar header of a regular file of `size` bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o600
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def tar_padding(size: int) -> bytes:
    """The zeros that round a member's data up to whole tar blocks."""
    return bytes(-size % _BLOCK)


TAR_END = bytes(2 * _BLOCK)


@dataclass
class ExportSummary:
    """What the archive holds (also written to manifest.json)."""

    tenant_id: uuid.UUID
    rows: dict[str, int] = field(default_factory=dict)
    audit_rows: int = 0
    audit_head_seq: int | None = None
    audit_head_hash: str | None = None
    anchor_signed: bool = False
    documents_with_content: int = 0
    content_bytes: int = 0
    archive_bytes: int = 0


class _Archive:
    """Writes members and remembers each one's SHA-256 for the manifest."""

    def __init__(self, mtime: float) -> None:
        self.mtime = mtime
        self.files: dict[str, dict[str, Any]] = {}
        self.bytes_out = 0

    def _count(self, chunk: bytes) -> bytes:
        self.bytes_out += len(chunk)
        return chunk

    def member(self, name: str, data: bytes) -> Iterator[bytes]:
        self.files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        yield self._count(tar_header(name, len(data), self.mtime))
        yield self._count(data)
        yield self._count(tar_padding(len(data)))

    async def streamed_member(
        self, name: str, size: int, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """A member whose size is known before its data (decrypted content)."""
        digest = hashlib.sha256()
        written = 0
        yield self._count(tar_header(name, size, self.mtime))
        async for chunk in chunks:
            written += len(chunk)
            if written > size:
                raise ExportError(f"{name}: more than the recorded {size} bytes")
            digest.update(chunk)
            yield self._count(chunk)
        if written != size:
            raise ExportError(f"{name}: {written} bytes where {size} were recorded")
        self.files[name] = {"sha256": digest.hexdigest(), "bytes": size}
        yield self._count(tar_padding(size))


class _Parts:
    """Cuts a stream of JSON lines into numbered parts of bounded size."""

    def __init__(self, archive: _Archive, folder: str) -> None:
        self.archive = archive
        self.folder = folder
        self.buffer = bytearray()
        self.rows = 0
        self.number = 0
        self.total = 0

    def add(self, line: bytes) -> Iterator[bytes]:
        self.buffer += line
        self.rows += 1
        self.total += 1
        if self.rows >= PART_ROWS or len(self.buffer) >= PART_BYTES:
            yield from self.flush()

    def flush(self) -> Iterator[bytes]:
        if not self.rows:
            return
        self.number += 1
        data = bytes(self.buffer)
        self.buffer.clear()
        self.rows = 0
        yield from self.archive.member(f"{self.folder}/part-{self.number:06d}.jsonl", data)


def content_reader(store: ObjectStore, keys: KeyManager) -> ContentReader:
    """Opens a document row's content decrypted: its data key unwrapped under its tenant's
    key (bound to the tenant and document), its object verified segment by segment."""

    async def read(document: Any) -> AsyncIterator[bytes] | None:
        if document.content_object_key is None:
            return None
        context = EncryptionContext(tenant_id=document.tenant_id, document_id=document.id)
        sealed = await store.get_stream(document.content_object_key)
        return await envelope.unseal(
            keys, document.content_key_ref, document.content_wrapped_key, context, sealed
        )

    return read


async def _content_members(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    archive: _Archive,
    read_content: ContentReader,
    summary: ExportSummary,
    prefetch: int,
) -> AsyncIterator[bytes]:
    """Each document's decrypted content, in id order. The next `prefetch` documents are
    opened (data key unwrapped, object opened) while one is written: per document, the KMS
    and storage round trips dominate, and they overlap this way; memory stays a few segments
    per open document."""
    statement = (
        select(
            Document.id,
            Document.tenant_id,
            Document.size_bytes,
            Document.content_object_key,
            Document.content_wrapped_key,
            Document.content_key_ref,
            Document.content_sha256,
        )
        .where(Document.tenant_id == tenant_id, Document.content_object_key.is_not(None))
        .order_by(Document.id)
    )
    documents = await session.stream(statement.execution_options(yield_per=STREAM_ROWS))
    opening: deque[tuple[Any, asyncio.Task[AsyncIterator[bytes] | None]]] = deque()

    async def written(document: Any, task: asyncio.Task[AsyncIterator[bytes] | None]) -> Any:
        chunks = await task
        if chunks is None:
            return
        name = f"content/{document.id}"
        async for chunk in archive.streamed_member(name, document.size_bytes, chunks):
            yield chunk
        if archive.files[name]["sha256"] != document.content_sha256:
            raise ExportError(f"{name}: the content's SHA-256 is not the one recorded at upload")
        summary.documents_with_content += 1
        summary.content_bytes += document.size_bytes

    try:
        async for document in documents:
            opening.append((document, asyncio.ensure_future(read_content(document))))
            if len(opening) >= prefetch:
                async for chunk in written(*opening.popleft()):
                    yield chunk
        while opening:
            async for chunk in written(*opening.popleft()):
                yield chunk
    finally:
        for _document, task in opening:
            task.cancel()


EXPORT_RETRY_AFTER_SECONDS = 10
"""Retry-After of a refused export: an export of a small tenant takes seconds."""


def _refuse_second_export() -> NoReturn:
    metrics.RATE_LIMITED.labels(reason="tenant_export_running").inc()
    raise TooManyRequestsError(
        "an export of your tenant is already being streamed (one at a time per tenant);"
        " retry when it has finished",
        retry_after_seconds=EXPORT_RETRY_AFTER_SECONDS,
    )


class ExportClaim:
    """The tenant's export claim: its lock, held in a transaction of its own until `release`."""

    def __init__(self, transaction: AsyncExitStack) -> None:
        self._transaction = transaction

    async def release(self) -> None:
        """End the claim's transaction (and its lock); a second call does nothing."""
        await self._transaction.aclose()


@asynccontextmanager
async def claim_export(
    sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID
) -> AsyncIterator[ExportClaim]:
    """Claim the tenant's export before anything is written for it; 429 (reason
    `tenant_export_running`) while another export of it, in any worker, holds the claim or
    streams. Held until released (once the stream is taken) or the block ends."""
    scope = str(tenant_id)
    async with AsyncExitStack() as opening:
        session = await opening.enter_async_context(tenant_transaction(sessions, tenant_id))
        claimed = await try_transaction_lock(session, LockClass.TENANT_EXPORT_CLAIM, scope)
        if not claimed or not await transaction_lock_free(session, LockClass.TENANT_EXPORT, scope):
            _refuse_second_export()
        claim = ExportClaim(opening.pop_all())
    try:
        yield claim
    finally:
        await claim.release()


async def take_export_stream(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Hold the tenant's stream lock until `session`'s transaction ends (its first step, while
    the export's claim is still held). 429 if it is taken, which only an export that bypassed
    `claim_export` could cause."""
    if not await try_transaction_lock(session, LockClass.TENANT_EXPORT, str(tenant_id)):
        _refuse_second_export()


async def audit_export(
    session: AsyncSession, actor: Actor, tenant_id: uuid.UUID, *, signed: bool
) -> Tenant:
    """Write the `tenant.export` audit row (before the archive's snapshot is taken)."""
    actor.require_admin()
    tenant = await TENANTS.get_or_404(session, actor, tenant_id, include_deleted=True)
    await audit.record(
        session,
        actor,
        "tenant.export",
        tenant,
        details={"format": ARCHIVE_FORMAT, "signed": signed},
    )
    return tenant


async def stream_archive(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    anchor_key: Ed25519PrivateKey | None,
    read_content: ContentReader | None = None,
    progress: Progress = _quiet,
    summary: ExportSummary | None = None,
    content_prefetch: int = CONTENT_PREFETCH,
) -> AsyncGenerator[bytes, None]:
    """The tenant's archive, chunk by chunk; `session` is a REPEATABLE READ transaction.

    As the provisioning role or as `app_runtime` in the tenant's context (RLS shows the same
    rows). `anchor_key` signs the chain's head; without it `audit/anchor.json` holds the head
    unsigned (the API server has no signing key: docs/AUDIT_INTEGRITY.md).
    `content_prefetch`: documents opened ahead of the one being written (1: one at a time).
    """
    summary = summary if summary is not None else ExportSummary(tenant_id)
    exported_at = await session.scalar(select(func.now()))
    assert exported_at is not None
    archive = _Archive(time.time())
    header = {
        "format": ARCHIVE_FORMAT,
        "tenant_id": str(tenant_id),
        "exported_at": exported_at.isoformat(),
        "tables": list(EXPORTED_TABLES),
        "audit_encoding": audit_integrity_service.ENCODING_VERSION,
    }
    for chunk in archive.member("archive.json", _json_line(header)):
        yield chunk

    for name, (table, tenant_column) in EXPORTED_TABLES.items():
        parts = _Parts(archive, f"rows/{name}")
        statement = select(table).where(tenant_column == tenant_id).order_by(table.c.id)
        rows = await session.stream(statement.execution_options(yield_per=STREAM_ROWS))
        async for row in rows:
            for chunk in parts.add(_json_line(dict(row._mapping))):
                yield chunk
        for chunk in parts.flush():
            yield chunk
        summary.rows[name] = parts.total
        progress(f"rows/{name}: {parts.total} rows")

    verification = await audit_integrity_service.verify_chain(session, tenant_id=tenant_id)
    chain = _Parts(archive, "audit/chain")
    async for row in audit_integrity_service.canonical_rows(session, tenant_id):
        line = {
            "chain_seq": row.chain_seq,
            "prev_hash": bytes(row.prev_hash).hex(),
            "row_hash": bytes(row.row_hash).hex(),
            "canonical": audit_integrity_service.canonical_fields(row),
        }
        for chunk in chain.add(_json_line(line)):
            yield chunk
    for chunk in chain.flush():
        yield chunk
    status = verification.tenants[0]
    summary.audit_rows = chain.total
    summary.audit_head_seq = status.head_seq
    summary.audit_head_hash = status.head_hash
    progress(f"audit/chain: {chain.total} rows, chain {'OK' if verification.ok else 'BROKEN'}")

    anchor: dict[str, Any]
    if anchor_key is not None and verification.ok:
        signed = audit_anchor_service.sign_anchor(
            audit_anchor_service.anchor_from_verification(verification), anchor_key
        )
        anchor = signed.model_dump(mode="json")
        summary.anchor_signed = True
    else:
        anchor = {
            "unsigned_head": {
                "tenant_id": str(tenant_id),
                "chain_seq": status.head_seq,
                "row_hash": status.head_hash,
                "chain_verified": verification.ok,
            }
        }
    for chunk in archive.member("audit/anchor.json", _json_line(anchor)):
        yield chunk

    if read_content is not None:
        members = _content_members(
            session, tenant_id, archive, read_content, summary, content_prefetch
        )
        async for chunk in members:
            yield chunk
        progress(
            f"content: {summary.documents_with_content} documents, "
            f"{summary.content_bytes / 2**20:.1f} MiB"
        )

    manifest = {
        "format": ARCHIVE_FORMAT,
        "tenant_id": str(tenant_id),
        "exported_at": exported_at.isoformat(),
        "rows": summary.rows,
        "audit": {
            "rows": summary.audit_rows,
            "head_seq": summary.audit_head_seq,
            "head_hash": summary.audit_head_hash,
            "anchor_signed": summary.anchor_signed,
        },
        "content": {
            "documents": summary.documents_with_content,
            "bytes": summary.content_bytes,
        },
        "files": archive.files,
    }
    for chunk in archive.member("manifest.json", _json_line(manifest)):
        yield chunk
    yield TAR_END
    summary.archive_bytes = archive.bytes_out + len(TAR_END)
