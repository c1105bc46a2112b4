"""The export archive: every row, the whole audit chain with a signed head, a manifest.

The archive is checked by the standalone verifier (scripts/verify_tenant_export.py) in a
subprocess, as a third party would: it passes untouched, and fails for a changed byte, a
missing file, or a chain cut short with the manifest recomputed to match.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.key_manager import KeyManager
from app.content.object_store import ObjectStore, S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.config import BACKEND_DIR
from app.database.session import admin_transaction, make_sessionmaker
from app.models import AuditLog
from app.services import audit_anchor as audit_anchor_service
from app.services import audit_integrity as audit_integrity_service
from app.services import tenant_export as export_service
from app.services.actor import Actor
from tests.conftest import MakeCaller
from tests.test_lifecycle.conftest import public_key_text, rows_of, seed_tenant

VERIFIER = BACKEND_DIR / "scripts" / "verify_tenant_export.py"
OPERATOR = Actor.operator()


def verify_archive(archive: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run the standalone verifier on `archive`."""
    return subprocess.run(
        [sys.executable, str(VERIFIER), str(archive), *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def export_to(
    admin_sessions: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    path: Path,
    anchor_key: Ed25519PrivateKey | None,
    store: ObjectStore,
    keys: KeyManager,
) -> export_service.ExportSummary:
    """Audit and export the tenant as the CLI does: one REPEATABLE READ snapshot."""
    async with admin_transaction(admin_sessions) as session:
        await export_service.audit_export(
            session, OPERATOR, tenant_id, signed=anchor_key is not None
        )
    engine = admin_sessions.kw["bind"]
    snapshots = make_sessionmaker(engine.execution_options(isolation_level="REPEATABLE READ"))
    summary = export_service.ExportSummary(tenant_id)
    with path.open("wb") as out:
        async with admin_transaction(snapshots) as session:
            async for chunk in export_service.stream_archive(
                session,
                tenant_id,
                anchor_key=anchor_key,
                read_content=export_service.content_reader(store, keys),
                summary=summary,
            ):
                out.write(chunk)
    return summary


def members(path: Path) -> dict[str, bytes]:
    """Every member of the archive, in order."""
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def rewrite(path: Path, changed: dict[str, bytes | None], *, fix_manifest: bool) -> Path:
    """A copy of the archive with members changed (None: removed), manifest optionally redone."""
    files = members(path)
    manifest = json.loads(files.pop("manifest.json"))
    for name, data in changed.items():
        if data is None:
            files.pop(name)
            manifest["files"].pop(name) if fix_manifest else None
        else:
            files[name] = data
            if fix_manifest:
                manifest["files"][name] = {
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "bytes": len(data),
                }
    files["manifest.json"] = json.dumps(manifest).encode()
    copy = path.with_name(f"tampered-{uuid.uuid4().hex[:6]}.tar")
    with tarfile.open(copy, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return copy


def jsonl(data: bytes) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file."""
    return [json.loads(line) for line in data.splitlines()]


async def test_archive_holds_every_row_and_the_whole_chain_and_verifies(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
    anchor_key: Ed25519PrivateKey,
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    seeded = await seed_tenant(
        admin_sessions, runtime_sessions, object_store, key_manager, users=3, documents=5
    )
    async with admin_transaction(admin_sessions) as session:
        earlier = audit_anchor_service.sign_anchor(
            audit_anchor_service.anchor_from_verification(
                await audit_integrity_service.verify_chain(session)
            ),
            anchor_key,
        )
    anchor_file = tmp_path / "earlier-anchor.json"
    anchor_file.write_text(earlier.model_dump_json())
    monkeypatch.setattr(export_service, "PART_ROWS", 2)  # several parts per table
    archive = tmp_path / "export.tar"

    summary = await export_to(
        admin_sessions, seeded.tenant_id, archive, anchor_key, object_store, key_manager
    )

    key = public_key_text(anchor_key)
    result = verify_archive(archive, "--public-key", key, "--anchor", str(anchor_file))
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith(f"OK archive of tenant {seeded.tenant_id}")
    assert "signed head matches" in result.stdout
    files = members(archive)
    names = list(files)
    assert names[0] == "archive.json"
    assert names[-1] == "manifest.json"
    assert json.loads(files["archive.json"])["format"] == "tenant-export/1"
    assert [n for n in names if n.startswith("rows/documents/")] == [
        "rows/documents/part-000001.jsonl",
        "rows/documents/part-000002.jsonl",
        "rows/documents/part-000003.jsonl",
    ]
    # Every row, every column, as the database holds them (JSON-encoded).
    expected = await rows_of(admin_sessions, seeded.tenant_id)
    for table, rows in expected.items():
        exported = [
            row for name in names if name.startswith(f"rows/{table}/") for row in jsonl(files[name])
        ]
        assert exported == [
            json.loads(json.dumps(row, default=export_service.json_value)) for row in rows
        ]
    assert summary.rows == {"tenants": 1, "users": 3, "documents": 5}
    # Every document's content, decrypted, with the SHA-256 recorded at upload.
    manifest = json.loads(files["manifest.json"])
    for document in expected["documents"]:
        name = f"content/{document['id']}"
        assert files[name] == seeded.plaintexts[document["id"]]
        assert manifest["files"][name]["sha256"] == document["content_sha256"]
    assert summary.documents_with_content == 5
    # The chain ends with the export's own audit row, and the signed head is its last row.
    chain = [row for n in names if n.startswith("audit/chain/") for row in jsonl(files[n])]
    assert chain[-1]["canonical"][6] == "tenant.export"
    anchor = json.loads(files["audit/anchor.json"])
    assert anchor["anchor"]["heads"] == [
        {
            "tenant_id": str(seeded.tenant_id),
            "chain_seq": len(chain),
            "row_hash": chain[-1]["row_hash"],
            "created_at": anchor["anchor"]["heads"][0]["created_at"],
        }
    ]
    async with admin_transaction(admin_sessions) as session:
        exports = await session.scalars(
            select(AuditLog.metadata_).where(
                AuditLog.tenant_id == seeded.tenant_id, AuditLog.action == "tenant.export"
            )
        )
        assert [m["signed"] for m in exports] == [True]

    # What the verifier catches.
    part = "rows/documents/part-000001.jsonl"
    flipped = files[part].replace(b'"tenant_id"', b'"tenant_iD"', 1)
    assert flipped != files[part]
    last_part = [n for n in names if n.startswith("audit/chain/")][-1]
    cases = {
        "SHA-256 or size differs": rewrite(archive, {part: flipped}, fix_manifest=False),
        "listed in the manifest but missing": rewrite(archive, {part: None}, fix_manifest=False),
        "does not hold the whole chain": rewrite(
            archive,
            {last_part: None},
            fix_manifest=True,
        ),
        "contents do not match": rewrite(
            archive,
            {
                "audit/chain/part-000001.jsonl": files["audit/chain/part-000001.jsonl"].replace(
                    b"tenant.create", b"tenant.delete", 1
                )
            },
            fix_manifest=True,
        ),
        "signature does not verify": rewrite(
            archive,
            {
                "audit/anchor.json": files["audit/anchor.json"].replace(
                    b'"chain_seq": ', b'"chain_seq": 1', 1
                )
            },
            fix_manifest=True,
        ),
    }
    assert last_part != "audit/chain/part-000001.jsonl"  # there is a tail to cut
    for problem, tampered in cases.items():
        broken = verify_archive(tampered, "--public-key", key)
        assert broken.returncode == 1, (problem, broken.stdout)
        assert problem in broken.stdout, (problem, broken.stdout)


async def test_admins_export_over_the_api_and_members_are_refused(
    admin_sessions: async_sessionmaker[AsyncSession],
    content_client: httpx.AsyncClient,
    make_caller: MakeCaller,
    tmp_path: Path,
) -> None:
    admin = await make_caller(role="admin")
    member = await make_caller(role="member", tenant=admin.tenant)
    other = await make_caller(role="admin")

    client = content_client
    refused = await client.get("/api/v1/tenant/export", headers=member.headers)
    assert refused.status_code == 403
    answer = await client.get("/api/v1/tenant/export", headers=admin.headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-tar"
    assert f"tenant-{admin.tenant.id}.tar" in answer.headers["content-disposition"]
    archive = tmp_path / "api.tar"
    archive.write_bytes(answer.content)

    result = verify_archive(archive)
    assert result.returncode == 0, result.stdout
    assert "UNSIGNED head" in result.stdout
    files = members(archive)
    users = [row for n in files if n.startswith("rows/users/") for row in jsonl(files[n])]
    assert {row["id"] for row in users} == {str(admin.user.id), str(member.user.id)}
    # The snapshot is taken after the request committed the export's audit row: it ends the chain.
    chain = [row for n in files if n.startswith("audit/chain/") for row in jsonl(files[n])]
    assert chain[-1]["canonical"][6] == "tenant.export"
    assert str(other.tenant.id).encode() not in answer.content  # nothing of another tenant
    async with admin_transaction(admin_sessions) as session:
        audited = await session.scalars(
            select(AuditLog.user_id).where(
                AuditLog.tenant_id == admin.tenant.id, AuditLog.action == "tenant.export"
            )
        )
        assert list(audited) == [admin.user.id]
