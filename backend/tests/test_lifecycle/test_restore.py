"""Restore one tenant from its export into a fresh database: ids, rows and the audit chain.

The chain is rebuilt by the database's own trigger (nothing switched off), so the restored
rows hash exactly as the originals: the export's signed anchor verifies against the restored
database. A tampered archive, or a tenant that is already there, restores nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content import envelope
from app.content.key_manager import EncryptionContext
from app.content.object_store import S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.errors import ConflictError
from app.database.session import admin_transaction
from app.models import AuditLog
from app.services import audit_anchor as audit_anchor_service
from app.services import audit_integrity as audit_integrity_service
from app.services import tenant_import as import_service
from app.services.actor import Actor
from tests.test_content.test_envelope import collect
from tests.test_lifecycle.conftest import rows_of, seed_tenant
from tests.test_lifecycle.test_export import export_to, members, rewrite

OPERATOR = Actor.operator()


async def _chain(sessions: async_sessionmaker[AsyncSession], tenant_id: object) -> list[tuple]:
    async with admin_transaction(sessions) as session:
        rows = await session.execute(
            select(AuditLog.id, AuditLog.chain_seq, AuditLog.row_hash)
            .where(AuditLog.tenant_id == tenant_id)
            .order_by(AuditLog.chain_seq)
        )
        return [tuple(row) for row in rows]


async def test_a_tenant_restores_into_a_fresh_database_with_its_chain_verifiable(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    restore_admin_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
    anchor_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    seeded = await seed_tenant(
        admin_sessions, runtime_sessions, object_store, key_manager, users=2, documents=3
    )
    archive = tmp_path / "export.tar"
    await export_to(
        admin_sessions, seeded.tenant_id, archive, anchor_key, object_store, key_manager
    )
    original_rows = await rows_of(admin_sessions, seeded.tenant_id)
    original_chain = await _chain(admin_sessions, seeded.tenant_id)

    async with admin_transaction(restore_admin_sessions) as session:
        summary = await import_service.import_archive(
            session, OPERATOR, archive, anchor_key.public_key(), object_store, key_manager
        )

    assert summary.anchor_checked
    assert summary.rows == {"tenants": 1, "users": 2, "documents": 3}
    assert summary.documents_with_content == 3
    restored = await rows_of(restore_admin_sessions, seeded.tenant_id)
    # Every id and column; the content sealed anew (new object, new wrapped data key), with
    # the same SHA-256 and upload time (updated_at: the restore's, set by the row's trigger).
    resealed = ("content_object_key", "content_wrapped_key", "content_key_version", "updated_at")
    for table in ("tenants", "users"):
        assert restored[table] == original_rows[table]
    for before, after in zip(original_rows["documents"], restored["documents"], strict=True):
        assert {k: v for k, v in after.items() if k not in resealed} == {
            k: v for k, v in before.items() if k not in resealed
        }
        assert after["content_wrapped_key"] != before["content_wrapped_key"]
        document_id = after["id"]
        opened = await envelope.unseal(
            key_manager,
            after["content_key_ref"],
            after["content_wrapped_key"],
            EncryptionContext(seeded.tenant_id, document_id),
            await object_store.get_stream(after["content_object_key"]),
        )
        assert await collect(opened) == seeded.plaintexts[document_id]
    # The chain: the same rows with the same hashes, then the restore's own row.
    restored_chain = await _chain(restore_admin_sessions, seeded.tenant_id)
    assert restored_chain[: len(original_chain)] == original_chain
    assert len(restored_chain) == len(original_chain) + 1
    signed = json.loads(members(archive)["audit/anchor.json"])
    anchor = audit_anchor_service.open_anchor(json.dumps(signed), anchor_key.public_key())
    async with admin_transaction(restore_admin_sessions) as session:
        verification = await audit_integrity_service.verify_chain(
            session, tenant_id=seeded.tenant_id, anchor=anchor
        )
    assert verification.ok, verification.first_break
    assert verification.heads_checked

    # Restoring again is refused; nothing changes.
    async with admin_transaction(restore_admin_sessions) as session:
        with pytest.raises(ConflictError, match="already exists"):
            await import_service.import_archive(
                session, OPERATOR, archive, anchor_key.public_key(), object_store, key_manager
            )


async def test_a_tampered_archive_restores_nothing(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    restore_admin_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
    anchor_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    seeded = await seed_tenant(
        admin_sessions, runtime_sessions, object_store, key_manager, users=1, documents=1
    )
    archive = tmp_path / "export.tar"
    await export_to(
        admin_sessions, seeded.tenant_id, archive, anchor_key, object_store, key_manager
    )
    files = members(archive)
    chain_part = "audit/chain/part-000001.jsonl"
    forged = files[chain_part].replace(b"document.create", b"document.delete", 1)
    user_part = "rows/users/part-000001.jsonl"
    cases = {
        "altered": rewrite(archive, {chain_part: forged}, fix_manifest=True),
        "do not match its manifest": rewrite(
            archive, {user_part: files[user_part].replace(b"@", b"#", 1)}, fix_manifest=False
        ),
    }
    for problem, tampered in cases.items():
        with pytest.raises(import_service.ArchiveError, match=problem):
            async with admin_transaction(restore_admin_sessions) as session:
                await import_service.import_archive(
                    session, OPERATOR, tampered, anchor_key.public_key(), object_store, key_manager
                )
        assert await rows_of(restore_admin_sessions, seeded.tenant_id) == {
            "tenants": [],
            "users": [],
            "documents": [],
        }
        assert await _chain(restore_admin_sessions, seeded.tenant_id) == []
