"""Idempotency-Key over HTTP (issue 21): replay, 422 on a different request, 409 in flight,
scoped to tenant and caller, expiry and purge, and no change without the header."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import admin_transaction
from app.services import documents as documents_service
from app.services import idempotency as idempotency_service
from testkit import database_harness as harness
from testkit.auth_helpers import AuthenticatedCaller
from tests.conftest import MigratedDatabase
from tests.test_api.conftest import API, Api, Tenants, document_body
from tests.test_middleware.conftest import assert_error
from tests.test_security.conftest import admin_scalar

DOCUMENTS = f"{API}/documents"


def _expire(migrated_db: MigratedDatabase, key: str) -> None:
    """Move a record's expiry into the past (as the superuser: no role may rewrite it)."""
    with psycopg.connect(harness.libpq(migrated_db.superuser_url), autocommit=True) as conn:
        conn.execute(
            "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"
            " WHERE idempotency_key = %s",
            (key,),
        )


def _keyed(caller: AuthenticatedCaller, key: str) -> dict[str, str]:
    return {**caller.headers, "Idempotency-Key": key}


async def _documents_with_key(admin_sessions: async_sessionmaker[AsyncSession], s3_key: str) -> int:
    return int(
        await admin_scalar(
            admin_sessions, "SELECT count(*) FROM documents WHERE s3_key = :k", {"k": s3_key}
        )
    )


async def test_same_key_and_request_replays_the_first_response_and_writes_once(
    client: httpx.AsyncClient, tenants: Tenants, api: Api, admin_sessions: Any
) -> None:
    body = document_body()
    key = str(uuid.uuid4())
    first = await client.post(DOCUMENTS, json=body, headers=_keyed(tenants.admin, key))
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = await client.post(DOCUMENTS, json=body, headers=_keyed(tenants.admin, key))
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["content-type"] == "application/json"
    assert again.headers["cache-control"] == "no-store"  # the retry's own PHI headers
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert await _documents_with_key(admin_sessions, body["s3_key"]) == 1
    audit = await api.audit_rows(tenants.admin.tenant.id, resource_id=uuid.UUID(first.json()["id"]))
    assert [row.action for row in audit] == ["document.create"]


async def test_same_key_with_a_different_request_is_422_and_writes_nothing(
    client: httpx.AsyncClient, tenants: Tenants, admin_sessions: Any
) -> None:
    key = str(uuid.uuid4())
    first = await client.post(DOCUMENTS, json=document_body(), headers=_keyed(tenants.admin, key))
    assert first.status_code == 201, first.text
    other = document_body()
    response = await client.post(DOCUMENTS, json=other, headers=_keyed(tenants.admin, key))
    assert_error(response, 422, "idempotency_key_reused")
    assert await _documents_with_key(admin_sessions, other["s3_key"]) == 0
    # Another route under the same key is a different request too.
    patched = await client.patch(
        f"{DOCUMENTS}/{first.json()['id']}",
        json={"status": "completed"},
        headers=_keyed(tenants.admin, key),
    )
    assert_error(patched, 422, "idempotency_key_reused")


async def test_without_the_header_every_request_runs(
    client: httpx.AsyncClient, tenants: Tenants, admin_sessions: Any
) -> None:
    body = document_body()
    for _ in range(2):
        response = await client.post(DOCUMENTS, json=body, headers=tenants.admin.headers)
        assert response.status_code == 201, response.text
        assert "idempotent-replayed" not in response.headers
    assert await _documents_with_key(admin_sessions, body["s3_key"]) == 2


async def test_keys_are_scoped_to_the_caller_and_the_tenant(
    client: httpx.AsyncClient, tenants: Tenants, admin_sessions: Any
) -> None:
    key = "shared-key-0001"
    created = []
    for caller in (tenants.admin, tenants.member, tenants.other):
        response = await client.post(DOCUMENTS, json=document_body(), headers=_keyed(caller, key))
        assert response.status_code == 201, response.text
        assert "idempotent-replayed" not in response.headers
        created.append(response.json()["id"])
    assert len(set(created)) == 3


async def test_a_retry_while_the_first_runs_is_409_then_replays(
    client: httpx.AsyncClient,
    tenants: Tenants,
    admin_sessions: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first request holds its transaction open inside the handler while the retry arrives."""
    entered = asyncio.Event()
    release = asyncio.Event()
    original = documents_service.create_document

    async def slow_create(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(documents_service, "create_document", slow_create)
    body = document_body()
    headers = _keyed(tenants.admin, str(uuid.uuid4()))
    first = asyncio.create_task(client.post(DOCUMENTS, json=body, headers=headers))
    await asyncio.wait_for(entered.wait(), 30)
    during = await client.post(DOCUMENTS, json=body, headers=headers)
    error = assert_error(during, 409, "idempotency_key_in_flight")
    assert "in progress" in error["message"]
    assert during.headers["retry-after"] == "1"
    release.set()
    first_response = await first
    assert first_response.status_code == 201, first_response.text
    after = await client.post(DOCUMENTS, json=body, headers=headers)
    assert after.status_code == 201
    assert after.headers["idempotent-replayed"] == "true"
    assert after.json() == first_response.json()
    assert await _documents_with_key(admin_sessions, body["s3_key"]) == 1


async def test_patch_and_delete_replay_too(
    client: httpx.AsyncClient, tenants: Tenants, api: Api
) -> None:
    document = await api.create_document(tenants.admin)
    path = f"{DOCUMENTS}/{document['id']}"
    patch_headers = _keyed(tenants.admin, "patch-key-0001")
    patched = await client.patch(path, json={"status": "completed"}, headers=patch_headers)
    assert patched.status_code == 200, patched.text
    replayed = await client.patch(path, json={"status": "completed"}, headers=patch_headers)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == patched.json()
    delete_headers = _keyed(tenants.admin, "delete-key-0001")
    deleted = await client.delete(path, headers=delete_headers)
    assert deleted.status_code == 204
    # Without the key a second DELETE finds nothing; with it, the first answer comes back.
    assert (await client.delete(path, headers=tenants.admin.headers)).status_code == 404
    again = await client.delete(path, headers=delete_headers)
    assert again.status_code == 204
    assert again.headers["idempotent-replayed"] == "true"
    audit = await api.audit_rows(tenants.admin.tenant.id, resource_id=uuid.UUID(document["id"]))
    assert [row.action for row in audit] == [
        "document.create",
        "document.update",
        "document.delete",
    ]


async def test_a_failed_request_records_nothing_so_its_key_runs_again(
    client: httpx.AsyncClient, tenants: Tenants, admin_sessions: Any
) -> None:
    headers = _keyed(tenants.admin, str(uuid.uuid4()))
    invalid = await client.post(DOCUMENTS, json=document_body(size_bytes=-1), headers=headers)
    assert invalid.status_code == 422
    body = document_body()
    valid = await client.post(DOCUMENTS, json=body, headers=headers)
    assert valid.status_code == 201, valid.text
    assert "idempotent-replayed" not in valid.headers


@pytest.mark.parametrize(
    "value", ["", "has space", "x" * 256, "caf\u00e9"], ids=["empty", "space", "long", "non-ascii"]
)
async def test_a_malformed_key_is_400(
    client: httpx.AsyncClient, tenants: Tenants, value: str
) -> None:
    headers = {**tenants.admin.headers, "Idempotency-Key": value}
    encoded = [(k.encode(), v.encode("utf-8")) for k, v in headers.items()]
    request = client.build_request("POST", DOCUMENTS, json=document_body())
    request.headers = httpx.Headers(encoded)
    request.headers["content-type"] = "application/json"
    response = await client.send(request)
    error = assert_error(response, 400, "bad_request")
    assert "Idempotency-Key" in error["message"]


async def test_safe_methods_ignore_the_header(client: httpx.AsyncClient, tenants: Tenants) -> None:
    headers = _keyed(tenants.admin, "get-key-0001")
    for _ in range(2):
        response = await client.get(f"{API}/me", headers=headers)
        assert response.status_code == 200
        assert "idempotent-replayed" not in response.headers


async def test_an_expired_key_runs_again_and_the_purge_deletes_expired_records(
    client: httpx.AsyncClient,
    tenants: Tenants,
    admin_sessions: async_sessionmaker[AsyncSession],
    migrated_db: MigratedDatabase,
) -> None:
    key = str(uuid.uuid4())
    kept_key = str(uuid.uuid4())
    first = await client.post(DOCUMENTS, json=document_body(), headers=_keyed(tenants.admin, key))
    kept = await client.post(
        DOCUMENTS, json=document_body(), headers=_keyed(tenants.admin, kept_key)
    )
    assert (first.status_code, kept.status_code) == (201, 201)
    _expire(migrated_db, key)
    # Expired: the key is free again, even for a different request.
    body = document_body()
    fresh = await client.post(DOCUMENTS, json=body, headers=_keyed(tenants.admin, key))
    assert fresh.status_code == 201, fresh.text
    assert "idempotent-replayed" not in fresh.headers
    assert fresh.json()["id"] != first.json()["id"]
    _expire(migrated_db, key)
    async with admin_transaction(admin_sessions) as session:
        purged = await idempotency_service.purge_expired(session)
    assert purged >= 1
    remaining = await admin_scalar(
        admin_sessions,
        "SELECT array_agg(idempotency_key) FROM idempotency_keys WHERE idempotency_key IN (:a, :b)",
        {"a": key, "b": kept_key},
    )
    assert remaining == [kept_key]
