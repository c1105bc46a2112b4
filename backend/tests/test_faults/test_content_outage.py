"""Object storage or the KMS down: content uploads and downloads answer 503 naming the
dependency, and change no row (no status change, no content columns, no audit row)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.backends import ContentBackends
from app.content.object_store import S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.config import Settings
from app.database import Database
from app.database.session import admin_transaction
from app.main import create_app
from app.models import AuditLog, Document
from testkit.auth_helpers import AuthenticatedCaller
from testkit.factories import give_tenant_key
from tests.conftest import MakeCaller

API = "/api/v1"
DATA = b"%PDF-1.7 outage test"


async def _client(
    settings: Settings, database: Database, store: S3ObjectStore, keys: OpenBaoTransitKeyManager
) -> httpx.AsyncClient:
    content = ContentBackends(settings, store=store, keys=keys, owned=False)
    app = create_app(settings, database, content=content)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture
async def working(
    settings: Settings,
    database: Database,
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(settings, database, object_store, key_manager) as client:
        yield client


@pytest.fixture(params=["object_storage", "kms"])
async def broken(
    request: pytest.FixtureRequest,
    settings: Settings,
    database: Database,
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
    unreachable_store: S3ObjectStore,
    unreachable_keys: OpenBaoTransitKeyManager,
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The app with object storage or the KMS down, and the dependency's name."""
    store, keys = object_store, key_manager
    if request.param == "object_storage":
        store = unreachable_store
    else:
        keys = unreachable_keys
    async with await _client(settings, database, store, keys) as client:
        yield client, request.param


@pytest.fixture
async def caller(
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
    key_manager: OpenBaoTransitKeyManager,
) -> AuthenticatedCaller:
    caller = await make_caller(role="admin")
    await give_tenant_key(admin_sessions, key_manager, caller.tenant.id)
    return caller


async def _register(client: httpx.AsyncClient, caller: AuthenticatedCaller) -> str:
    body = {
        "filename": "scan.pdf",
        "content_type": "application/pdf",
        "size_bytes": len(DATA),
        "s3_bucket": "legacy",
        "s3_key": "legacy/scan.pdf",
    }
    response = await client.post(f"{API}/documents", json=body, headers=caller.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _upload(
    client: httpx.AsyncClient, caller: AuthenticatedCaller, document_id: str
) -> httpx.Response:
    return await client.put(
        f"{API}/documents/{document_id}/content",
        content=DATA,
        headers={**caller.headers, "Content-Type": "application/pdf"},
    )


async def _state(
    admin_sessions: async_sessionmaker[AsyncSession], document_id: str
) -> tuple[str, str | None, int]:
    """The row's status, its object key, and the number of audit rows about it."""
    async with admin_transaction(admin_sessions) as session:
        document = await session.scalar(select(Document).where(Document.id == document_id))
        audits = await session.scalar(
            select(func.count())
            .select_from(AuditLog)
            .where(AuditLog.resource_id == uuid.UUID(document_id))
        )
    assert document is not None
    return document.status, document.content_object_key, int(audits or 0)


def _assert_503(response: httpx.Response, dependency: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert (error["code"], error["dependency"]) == ("service_unavailable", dependency)
    assert response.headers["retry-after"]


async def test_upload_with_a_dependency_down_is_503_and_changes_nothing(
    working: httpx.AsyncClient,
    broken: tuple[httpx.AsyncClient, str],
    caller: AuthenticatedCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
) -> None:
    broken_client, dependency = broken
    document_id = await _register(working, caller)
    before = await _state(admin_sessions, document_id)
    _assert_503(await _upload(broken_client, caller, document_id), dependency)
    assert await _state(admin_sessions, document_id) == before == ("processing", None, 1)
    prefix = f"tenants/{caller.tenant.id}/documents/{document_id}/"
    assert [info async for info in object_store.list(prefix)] == []
    # Once the dependency is back, the same upload succeeds.
    assert (await _upload(working, caller, document_id)).status_code == 200


async def test_download_with_a_dependency_down_is_503_and_not_audited(
    working: httpx.AsyncClient,
    broken: tuple[httpx.AsyncClient, str],
    caller: AuthenticatedCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    broken_client, dependency = broken
    document_id = await _register(working, caller)
    assert (await _upload(working, caller, document_id)).status_code == 200
    before = await _state(admin_sessions, document_id)
    url = f"{API}/documents/{document_id}/content"
    _assert_503(await broken_client.get(url, headers=caller.headers), dependency)
    assert await _state(admin_sessions, document_id) == before
    assert (await working.get(url, headers=caller.headers)).content == DATA
