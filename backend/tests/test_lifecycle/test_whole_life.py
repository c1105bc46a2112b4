"""A tenant's whole life through the real CLI (`python -m app …` in a subprocess).

Create, use (users, documents with encrypted content), export, schedule, execute; then the
archive passes the standalone verifier, the database's audit chain verifies against an anchor
taken before the execution, and the content that was shredded cannot be read from a copy.
Also the CLI's answers to bad input, refusals and an unavailable dependency.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from app.cli.main import cli
from app.content import envelope
from app.content.embedded_openbao import EmbeddedOpenBao
from app.content.embedded_process import free_ports
from app.content.embedded_seaweedfs import EmbeddedS3
from app.content.key_manager import EncryptionContext, KeyManagerError
from app.content.object_store import S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.config import BACKEND_DIR, get_settings
from app.database.session import admin_transaction
from app.models import Document, Tenant, User
from app.services import audit_anchor as audit_anchor_service
from app.services import audit_integrity as audit_integrity_service
from app.services import tenant_lifecycle as lifecycle_service
from app.services.actor import Actor
from testkit.auth_helpers import TestIssuer
from testkit.factories import make_document, make_tenant, make_user
from tests.conftest import MigratedDatabase
from tests.test_cli.conftest import cli_environment
from tests.test_content.test_envelope import collect, stream
from tests.test_lifecycle.conftest import objects_of, public_key_text, rows_of
from tests.test_lifecycle.test_export import members, verify_archive

RunCli = Any


def _raw_private(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


@pytest.fixture
def content_env(
    embedded_s3: EmbeddedS3, embedded_openbao: EmbeddedOpenBao, anchor_key: Ed25519PrivateKey
) -> dict[str, str]:
    """The settings that point the CLI at this suite's S3, OpenBao and anchor key."""
    return {
        "S3_BUCKET": embedded_s3.bucket,
        "S3_ENDPOINT_URL": embedded_s3.endpoint_url,
        "S3_REGION": embedded_s3.region,
        "S3_ACCESS_KEY_ID": embedded_s3.access_key_id,
        "S3_SECRET_ACCESS_KEY": embedded_s3.secret_access_key,
        "OPENBAO_ADDR": embedded_openbao.address,
        "OPENBAO_TOKEN": embedded_openbao.token,
        "AUDIT_ANCHOR_SIGNING_KEY": _raw_private(anchor_key),
    }


@pytest.fixture
def run_cli(
    migrated_db: MigratedDatabase, dev_key_file: Path, content_env: dict[str, str]
) -> RunCli:
    """`await run_cli("offboard-tenant", id, "--execute")`: the CLI in a subprocess."""

    async def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "app", *args],
            cwd=BACKEND_DIR,
            env=cli_environment(migrated_db, dev_key_file, **{**content_env, **env}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


@pytest.fixture
def invoke_cli(
    migrated_db: MigratedDatabase, dev_key_file: Path, content_env: dict[str, str]
) -> Callable[..., Result]:
    """The same CLI in-process (typer's CliRunner): fast; only from synchronous tests."""
    runner = CliRunner()

    def invoke(*args: str, **env: str) -> Result:
        get_settings.cache_clear()
        try:
            return runner.invoke(
                cli,
                list(args),
                env=cli_environment(migrated_db, dev_key_file, **{**content_env, **env}),
            )
        finally:
            get_settings.cache_clear()

    return invoke


def _code(result: subprocess.CompletedProcess[str] | Result) -> int:
    if isinstance(result, subprocess.CompletedProcess):
        return result.returncode
    return result.exit_code


def _ok(result: subprocess.CompletedProcess[str] | Result) -> str:
    assert _code(result) == 0, (result.stdout, result.stderr)
    return result.stdout


def _one_line_error(
    result: subprocess.CompletedProcess[str] | Result, code: int, fragment: str
) -> None:
    assert _code(result) == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]


async def test_a_tenant_from_creation_to_tombstone(
    run_cli: RunCli,
    content_client: httpx.AsyncClient,
    test_issuer: TestIssuer,
    admin_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
    anchor_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    # Create.
    tenant_id = uuid.UUID(json.loads(_ok(await run_cli("create-tenant", "Clinic", "--json")))["id"])
    created = await run_cli(
        "create-user",
        "--tenant",
        str(tenant_id),
        "--email",
        "doctor@clinic.example",
        "--external-idp-id",
        f"sub-{tenant_id}",
        "--json",
    )
    owner_id = uuid.UUID(json.loads(_ok(created))["id"])
    # The tenant's own key was provisioned by create-tenant.
    async with admin_transaction(admin_sessions) as session:
        tenant = await session.get(Tenant, tenant_id)
        assert tenant is not None
        assert tenant.kms_key_arn is not None
        key_ref = tenant.kms_key_arn
        await make_user(session, tenant_id)
        owner = await session.get(User, owner_id)
        assert owner is not None
    # Use: the owner registers documents and uploads their content through the API.
    headers = test_issuer.headers_for(owner)
    plaintext = b"chart note: " * 20_000
    document_ids = []
    for number in range(3):
        registered = await content_client.post(
            "/api/v1/documents",
            json={
                "filename": f"note-{number}.txt",
                "content_type": "text/plain",
                "size_bytes": len(plaintext),
                "s3_bucket": "unused",
                "s3_key": f"unused/{number}",
            },
            headers=headers,
        )
        assert registered.status_code == 201, registered.text
        document_id = uuid.UUID(registered.json()["id"])
        uploaded = await content_client.put(
            f"/api/v1/documents/{document_id}/content",
            content=plaintext,
            headers={**headers, "Content-Type": "text/plain"},
        )
        assert uploaded.status_code in (200, 201), uploaded.text
        document_ids.append(document_id)
    downloaded = await content_client.get(
        f"/api/v1/documents/{document_ids[0]}/content", headers=headers
    )
    assert downloaded.content == plaintext
    # What a thief or a backup holds from now on: each object and its wrapped data key.
    stolen: dict[uuid.UUID, tuple[bytes, bytes]] = {}
    object_keys = []
    async with admin_transaction(admin_sessions) as session:
        for document_id in document_ids:
            document = await session.get(Document, document_id)
            assert document is not None
            assert document.content_object_key is not None
            assert document.content_wrapped_key is not None
            object_keys.append(document.content_object_key)
            ciphertext = await collect(await object_store.get_stream(document.content_object_key))
            stolen[document_id] = (ciphertext, document.content_wrapped_key)

    # Export (progress on stderr), anchor, schedule, execute.
    archive = tmp_path / "clinic.tar"
    exported = await run_cli("export-tenant", str(tenant_id), "--output", str(archive))
    assert exported.returncode == 0, exported.stderr
    assert "rows/documents: 3 rows" in exported.stderr
    assert f"exported tenant {tenant_id}" in exported.stdout
    async with admin_transaction(admin_sessions) as session:
        before = audit_anchor_service.anchor_from_verification(
            await audit_integrity_service.verify_chain(session)
        )
    scheduled = await run_cli("offboard-tenant", str(tenant_id), "--schedule", "--grace-days", "0")
    assert "access revoked" in _ok(scheduled)
    executed = _ok(await run_cli("offboard-tenant", str(tenant_id), "--execute"))
    assert "3 documents and 2 users erased" in executed
    assert "key destroyed" in executed
    assert "already offboarded" in _ok(
        await run_cli("offboard-tenant", str(tenant_id), "--execute")
    )

    # The archive passes the standalone verifier and holds what the tenant had.
    result = verify_archive(archive, "--public-key", public_key_text(anchor_key))
    assert result.returncode == 0, result.stdout
    files = members(archive)
    assert len([n for n in files if n.startswith("rows/users/")]) == 1
    for document_id in document_ids:
        assert files[f"content/{document_id}"] == plaintext  # the content, decrypted
    # The database: nothing left but the tombstone, the chain verifies against the anchor.
    rows = await rows_of(admin_sessions, tenant_id)
    assert (rows["users"], rows["documents"], rows["tenants"][0]["status"]) == (
        [],
        [],
        "offboarded",
    )
    assert set((await objects_of(object_store, object_keys)).values()) == {None}
    assert [o async for o in object_store.list(f"tenants/{tenant_id}/")] == []
    async with admin_transaction(admin_sessions) as session:
        verified = await audit_integrity_service.verify_chain(
            session, tenant_id=tenant_id, anchor=before
        )
    assert verified.ok, verified.first_break
    assert verified.tenants[0].row_count > next(
        head.chain_seq for head in before.heads if head.tenant_id == tenant_id
    )  # the offboarding's own rows came after the anchor
    # What was shredded cannot be read, even from a copy of the objects and wrapped keys.
    for document_id, (ciphertext, wrapped) in stolen.items():
        with pytest.raises(KeyManagerError):
            await envelope.unseal(
                key_manager,
                key_ref,
                wrapped,
                EncryptionContext(tenant_id, document_id),
                stream([ciphertext]),
            )


def test_cli_bad_input_refusals_and_purge(
    invoke_cli: Callable[..., Result], tmp_path: Path
) -> None:
    _one_line_error(
        invoke_cli("offboard-tenant", str(uuid.uuid4()), "--schedule", "--execute"),
        2,
        "exactly one of",
    )
    _one_line_error(invoke_cli("offboard-tenant", "nope", "--schedule"), 2, "must be a UUID")
    _one_line_error(invoke_cli("offboard-tenant", str(uuid.uuid4()), "--schedule"), 1, "no tenant")
    missing = tmp_path / "x.tar"
    _one_line_error(
        invoke_cli("export-tenant", str(uuid.uuid4()), "-o", str(missing)), 1, "no tenant"
    )
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []  # no partial archive left behind either
    tenant_id = json.loads(_ok(invoke_cli("create-tenant", "Soon", "--json")))["id"]
    _one_line_error(
        invoke_cli("export-tenant", tenant_id, "-o", str(missing), AUDIT_ANCHOR_SIGNING_KEY=""),
        2,
        "AUDIT_ANCHOR_SIGNING_KEY",
    )
    assert "access revoked" in _ok(invoke_cli("offboard-tenant", tenant_id, "--schedule"))
    _one_line_error(
        invoke_cli("offboard-tenant", tenant_id, "--execute"), 1, "grace period runs until"
    )
    assert "active again" in _ok(invoke_cli("offboard-tenant", tenant_id, "--cancel"))
    _one_line_error(invoke_cli("offboard-tenant", tenant_id, "--cancel"), 1, "is active")
    assert "purged what was deleted before" in _ok(
        invoke_cli("purge-deleted", "--retention-days", "30")
    )


async def test_an_unavailable_dependency_stops_the_cli_before_anything_is_deleted(
    run_cli: RunCli, admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with admin_transaction(admin_sessions) as session:
        tenant = await make_tenant(session)
        user = await make_user(session, tenant)
        await make_document(session, user, s3_key=f"tenants/{tenant.id}/documents/a")
        await lifecycle_service.schedule_offboarding(
            session, Actor.operator(), tenant.id, timedelta(0)
        )
    (closed,) = free_ports(1)
    stopped = await run_cli(
        "offboard-tenant", str(tenant.id), "--execute", S3_ENDPOINT_URL=f"http://127.0.0.1:{closed}"
    )
    _one_line_error(stopped, 3, "object storage unavailable during the pre-flight check")
    rows = await rows_of(admin_sessions, tenant.id)
    assert (len(rows["users"]), len(rows["documents"])) == (1, 1)
