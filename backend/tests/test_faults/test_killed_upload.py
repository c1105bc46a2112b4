"""A server killed mid-upload leaves no completed row and no readable object; the orphan sweep
removes what a killed upload leaves in storage (unfinished multipart parts, or an object stored
just before its row would have been written) and nothing that a row still names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.embedded_openbao import EmbeddedOpenBao
from app.content.embedded_seaweedfs import EmbeddedS3
from app.content.object_store import S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.database.session import admin_transaction
from app.models import Document
from app.services import content_sweep as content_sweep_service
from app.services import document_content as document_content_service
from testkit.factories import document_with_content, give_tenant_key, make_tenant, make_user
from tests.conftest import MigratedDatabase
from tests.dev_server import dev_server, s3_environment

SIZE = 40 * 1024 * 1024  # several 8 MiB multipart parts
CHUNK = 1024 * 1024


async def _document_row(
    admin_sessions: async_sessionmaker[AsyncSession], document_id: str
) -> Document:
    async with admin_transaction(admin_sessions) as session:
        document = await session.scalar(select(Document).where(Document.id == document_id))
    assert document is not None
    return document


async def test_a_server_killed_mid_upload_leaves_nothing_readable_and_the_sweep_cleans_up(
    migrated_db: MigratedDatabase,
    tmp_path: Path,
    embedded_openbao: EmbeddedOpenBao,
    embedded_s3: EmbeddedS3,
    object_store: S3ObjectStore,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with dev_server(
        migrated_db, tmp_path, embedded_openbao, **s3_environment(embedded_s3)
    ) as server:
        headers = {"Authorization": f"Bearer {server.token}"}
        base = f"http://127.0.0.1:{server.port}/api/v1"
        sent = asyncio.Event()
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
            body = {
                "filename": "big.bin",
                "content_type": "application/octet-stream",
                "size_bytes": SIZE,
                "s3_bucket": "legacy",
                "s3_key": "legacy/big.bin",
            }
            created = await http.post("/documents", json=body)
            assert created.status_code == 201, created.text
            document_id = created.json()["id"]
            tenant_id = uuid.UUID((await http.get("/me")).json()["tenant"]["id"])

            async def slow_body() -> AsyncIterator[bytes]:
                for index in range(SIZE // CHUNK):
                    if index == 20:  # 20 MiB in: at least two parts are in the store
                        sent.set()
                        await asyncio.sleep(30)  # the server dies meanwhile
                    yield os.urandom(CHUNK)

            async def upload() -> None:
                with contextlib.suppress(httpx.HTTPError):  # killed: no answer comes
                    await http.put(
                        f"/documents/{document_id}/content",
                        content=slow_body(),
                        headers={"Content-Type": "application/octet-stream"},
                    )

            uploading = asyncio.create_task(upload())
            await asyncio.wait_for(sent.wait(), timeout=120)
            await asyncio.sleep(2)  # let the server hand the parts it has to the store
            os.kill(server.pid, signal.SIGKILL)
            uploading.cancel()

    # No completed row, no object anyone can read.
    document = await _document_row(admin_sessions, document_id)
    assert (document.status, document.content_object_key) == ("processing", None)
    prefix = f"tenants/{tenant_id}/documents/{document_id}/"
    assert [info async for info in object_store.list(prefix)] == []

    # The unfinished multipart upload is the sweep's to abort (with no grace period here).
    report = await content_sweep_service.sweep_orphans(
        admin_sessions, object_store, grace=timedelta(0)
    )
    assert report.aborted_uploads >= 1
    again = await content_sweep_service.sweep_orphans(
        admin_sessions, object_store, grace=timedelta(0)
    )
    assert again.aborted_uploads == 0


async def test_the_sweep_deletes_objects_no_row_names_and_keeps_the_others(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    async with admin_transaction(admin_sessions) as session:
        tenant = await make_tenant(session)
        user = await make_user(session, tenant, role="admin")
    await give_tenant_key(admin_sessions, key_manager, tenant.id)
    kept = await document_with_content(runtime_sessions, user, b"kept", object_store, key_manager)
    # What a process killed between storing the object and writing its row leaves: step 2
    # of the upload done, step 3 never run.
    orphan_of = await document_with_content(runtime_sessions, user, b"", object_store, key_manager)
    target = document_content_service.UploadTarget(
        tenant_id=tenant.id,
        document_id=orphan_of.id,
        key_ref=f"tenant-{tenant.id}",
        size_bytes=6,
        object_key=document_content_service.object_key(tenant.id, orphan_of.id),
    )

    async def body() -> AsyncIterator[bytes]:
        yield b"orphan"

    stored = await document_content_service.store_content(target, body(), object_store, key_manager)
    assert await object_store.head(stored.object_key) is not None

    # Within the grace period nothing is touched (an upload may still be finishing).
    young = await content_sweep_service.sweep_orphans(admin_sessions, object_store)
    assert stored.object_key not in young.deleted
    assert await object_store.head(stored.object_key) is not None

    report = await content_sweep_service.sweep_orphans(
        admin_sessions, object_store, grace=timedelta(0)
    )
    assert stored.object_key in report.deleted
    assert await object_store.head(stored.object_key) is None
    for document in (kept, orphan_of):
        assert document.content_object_key not in report.deleted
        assert await object_store.head(document.content_object_key or "") is not None
