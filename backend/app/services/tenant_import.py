"""Restore one tenant from its export archive into a database that does not hold it.

Ids are kept, rows are inserted as exported, and the audit chain is rebuilt by the database's
own chain trigger: each audit row is inserted with its exported id, time and fields, in chain
order, so the trigger numbers and hashes it exactly as the original database did. Nothing is
switched off and no privilege is added: `app_admin` could always append audit rows. The
restore then requires the rebuilt head to equal the archive's last row, and the signed anchor
(when there is one) to verify with the configured key and name that same head; since each hash
covers the previous one, an equal head means every restored row is the exported one. One
transaction: any mismatch, a manifest digest that does not match, or an archive cut short
leaves nothing behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pgvector.sqlalchemy import Vector
from sqlalchemy import LargeBinary, Table, Uuid, insert, select, update
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.ext.asyncio import AsyncSession

from app.content.key_manager import KeyManager
from app.content.object_store import ObjectStore
from app.core.errors import ConflictError, InvalidInputError
from app.models import AuditLog, Document, Tenant
from app.models.audit_log import audit_chain_heads
from app.services import audit, document_content
from app.services import audit_anchor as audit_anchor_service
from app.services.actor import Actor
from app.services.tenant_export import ARCHIVE_FORMAT, EXPORTED_TABLES

INSERT_BATCH = 500
CHUNK_BYTES = 256 * 1024
AUDIT_LOGS: Table = AuditLog.__table__  # type: ignore[assignment]
# The canonical fields of an exported audit row (docs/AUDIT_INTEGRITY.md), by position.
_AUDIT_FIELDS = (
    "tenant_id",
    "chain_seq",
    "prev_hash",
    "id",
    "created_at",
    "user_id",
    "action",
    "resource_type",
    "resource_id",
    "ip_address",
    "user_agent",
    "metadata",
)


class ArchiveError(InvalidInputError):
    """The archive is not a complete, untampered tenant-export/1 archive."""


@dataclass
class ImportSummary:
    """What was restored."""

    tenant_id: uuid.UUID | None = None
    rows: dict[str, int] = field(default_factory=dict)
    audit_rows: int = 0
    audit_head_hash: str | None = None
    anchor_checked: bool = False
    documents_with_content: int = 0


def _converter(column: Any) -> Any:
    kind = column.type
    if isinstance(kind, Uuid):
        return uuid.UUID
    if isinstance(kind, TIMESTAMP):
        return datetime.fromisoformat
    if isinstance(kind, LargeBinary):
        return base64.b64decode
    if isinstance(kind, Vector):
        return list
    return None


def _row_values(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for name, value in row.items():
        column = table.c[name]
        convert = _converter(column)
        values[column.key] = convert(value) if (convert and value is not None) else value
    return values


def _audit_values(fields: list[str | None]) -> dict[str, Any]:
    named = dict(zip(_AUDIT_FIELDS, fields, strict=True))

    def as_uuid(value: str | None) -> uuid.UUID | None:
        return None if value is None else uuid.UUID(value)

    created_at = named["created_at"]
    metadata = named["metadata"]
    assert created_at is not None
    assert metadata is not None
    return {
        "id": as_uuid(named["id"]),
        "tenant_id": as_uuid(named["tenant_id"]),
        "created_at": datetime.fromisoformat(created_at),
        "user_id": as_uuid(named["user_id"]),
        "action": named["action"],
        "resource_type": named["resource_type"],
        "resource_id": as_uuid(named["resource_id"]),
        "ip_address": named["ip_address"],
        "user_agent": named["user_agent"],
        "metadata": json.loads(metadata),
    }


def _lines(stream: IO[bytes], digest: Any) -> Iterator[dict[str, Any]]:
    for line in stream:
        digest.update(line)
        yield json.loads(line)


def _batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= INSERT_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


async def _member_chunks(stream: IO[bytes], digest: Any) -> AsyncIterator[bytes]:
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
        yield chunk


async def import_archive(
    session: AsyncSession,
    actor: Actor,
    archive: Path,
    verify_key: Ed25519PublicKey | None,
    store: ObjectStore,
    keys: KeyManager,
) -> ImportSummary:
    """Restore the archive's tenant in `session` (an admin transaction); ArchiveError if it
    does not check out, ConflictError if the tenant is already there.

    Content is sealed anew under the tenant's key in this environment (created here) and
    stored in `store`; each document's SHA-256 must be the one recorded at its upload. On
    failure the objects stored so far are deleted again.
    """
    actor.require_admin()
    stored_keys: list[str] = []
    try:
        return await _import(session, actor, archive, verify_key, store, keys, stored_keys)
    except BaseException:
        for key in stored_keys:
            await store.delete(key)
        raise


async def _import(
    session: AsyncSession,
    actor: Actor,
    archive: Path,
    verify_key: Ed25519PublicKey | None,
    store: ObjectStore,
    keys: KeyManager,
    stored_keys: list[str],
) -> ImportSummary:
    summary = ImportSummary()
    key_ref: str | None = None
    # What each document's content must hash to, and when it was uploaded (from its row).
    uploads: dict[uuid.UUID, tuple[str, Any]] = {}
    digests: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] | None = None
    anchor_document: dict[str, Any] | None = None
    last_chain_row: dict[str, Any] | None = None
    try:
        tar = tarfile.open(archive, mode="r|")  # noqa: SIM115 (closed by the `with` below)
    except (OSError, tarfile.TarError) as exc:
        raise ArchiveError(f"{archive}: not a readable tar archive ({exc})") from None
    with tar:
        for member in tar:
            stream = tar.extractfile(member)
            if stream is None or manifest is not None:
                raise ArchiveError(f"{member.name}: unexpected member")
            digest = hashlib.sha256()
            name = member.name
            if name == "manifest.json":
                manifest = json.loads(stream.read())
                continue
            if name == "archive.json":
                data = stream.read()
                digest.update(data)
                header = json.loads(data)
                if header.get("format") != ARCHIVE_FORMAT:
                    raise ArchiveError(f"format {header.get('format')!r}, not {ARCHIVE_FORMAT}")
                summary.tenant_id = uuid.UUID(header["tenant_id"])
                if await session.get(Tenant, summary.tenant_id) is not None:
                    raise ConflictError(f"tenant {summary.tenant_id} already exists here")
            elif name.startswith("rows/"):
                table_name = name.split("/")[1]
                if table_name not in EXPORTED_TABLES or summary.tenant_id is None:
                    raise ArchiveError(f"{name}: unexpected member")
                table = EXPORTED_TABLES[table_name][0]
                for batch in _batches(_lines(stream, digest)):
                    values = [_row_values(table, row) for row in batch]
                    if table_name == "tenants":
                        # Its key belongs to the old environment: a new one, made here.
                        key_ref = await keys.create_tenant_key(summary.tenant_id)
                        for row in values:
                            row["kms_key_arn"] = key_ref
                    if table_name == "documents":
                        for row in values:  # re-sealed below, under the new key
                            if row["content_sha256"] is not None:
                                uploads[row["id"]] = (
                                    row["content_sha256"],
                                    row["content_uploaded_at"],
                                )
                            for column in document_content.CONTENT_COLUMNS:
                                row[column] = None
                    await session.execute(insert(table), values)
                    summary.rows[table_name] = summary.rows.get(table_name, 0) + len(batch)
            elif name.startswith("audit/chain/"):
                for batch in _batches(_lines(stream, digest)):
                    await session.execute(
                        insert(AUDIT_LOGS),
                        [_audit_values(row["canonical"]) for row in batch],
                    )
                    summary.audit_rows += len(batch)
                    last_chain_row = batch[-1]
            elif name.startswith("content/"):
                document_id = uuid.UUID(name.removeprefix("content/"))
                if document_id not in uploads or key_ref is None or summary.tenant_id is None:
                    raise ArchiveError(f"{name}: no document of the archive has content there")
                target = document_content.UploadTarget(
                    tenant_id=summary.tenant_id,
                    document_id=document_id,
                    key_ref=key_ref,
                    size_bytes=member.size,
                    object_key=document_content.object_key(summary.tenant_id, document_id),
                )
                stored_keys.append(target.object_key)
                stored = await document_content.store_content(
                    target, _member_chunks(stream, digest), store, keys
                )
                sha256, uploaded_at = uploads.pop(document_id)
                if stored.sha256 != sha256:
                    raise ArchiveError(f"{name}: not the content recorded at its upload")
                await session.execute(
                    update(Document)
                    .where(Document.tenant_id == summary.tenant_id, Document.id == document_id)
                    .values(
                        content_object_key=stored.object_key,
                        content_wrapped_key=stored.wrapped_key,
                        content_key_ref=key_ref,
                        content_key_version=stored.key_version,
                        content_sha256=stored.sha256,
                        content_uploaded_at=uploaded_at,
                    )
                )
                summary.documents_with_content += 1
            elif name == "audit/anchor.json":
                data = stream.read()
                digest.update(data)
                anchor_document = json.loads(data)
            else:
                raise ArchiveError(f"{name}: this version cannot restore it")
            digests[name] = {"sha256": digest.hexdigest(), "bytes": member.size}

    if manifest is None or anchor_document is None or summary.tenant_id is None:
        raise ArchiveError(
            "incomplete archive: manifest.json, archive.json or the anchor is missing"
        )
    if manifest.get("files") != digests:
        raise ArchiveError("the archive's files do not match its manifest")
    if uploads:
        raise ArchiveError(f"the content of {len(uploads)} documents is missing from the archive")
    await _check_chain(session, summary, last_chain_row, anchor_document, verify_key)
    tenant = await session.get(Tenant, summary.tenant_id)
    assert tenant is not None
    await audit.record(
        session, actor, "tenant.import", tenant, details={"audit_rows": summary.audit_rows}
    )
    return summary


async def _check_chain(
    session: AsyncSession,
    summary: ImportSummary,
    last_row: dict[str, Any] | None,
    anchor_document: dict[str, Any],
    verify_key: Ed25519PublicKey | None,
) -> None:
    head = (
        await session.execute(
            select(audit_chain_heads.c.last_seq, audit_chain_heads.c.last_hash).where(
                audit_chain_heads.c.tenant_id == summary.tenant_id
            )
        )
    ).first()
    rebuilt = (0, "0" * 64) if head is None else (head.last_seq, bytes(head.last_hash).hex())
    exported = (0, "0" * 64) if last_row is None else (last_row["chain_seq"], last_row["row_hash"])
    if rebuilt != exported:
        raise ArchiveError(
            f"the rebuilt audit chain ends at {rebuilt}, the archive's at {exported}: "
            "the archive's audit rows were altered"
        )
    summary.audit_head_hash = rebuilt[1]
    if "signature" not in anchor_document:
        return
    if verify_key is None:
        raise ArchiveError("the archive's anchor is signed: configure AUDIT_ANCHOR_VERIFY_KEY")
    try:
        anchor = audit_anchor_service.open_anchor(json.dumps(anchor_document), verify_key)
    except audit_anchor_service.AnchorError as exc:
        raise ArchiveError(f"the archive's anchor: {exc}") from None
    heads = [h for h in anchor.heads if h.tenant_id == summary.tenant_id]
    if [(h.chain_seq, h.row_hash) for h in heads] != [rebuilt]:
        raise ArchiveError("the signed anchor does not name the restored chain's head")
    summary.anchor_checked = True
