"""PUT/GET /documents/{id}/content: streamed in and out, encrypted with the tenant's own key,
checked against what was registered, audited, and nothing stored when a request is refused."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.backends import ContentBackends
from app.content.envelope import sealed_size
from app.content.object_store import S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.config import Settings
from app.database import Database
from app.database.session import admin_transaction
from app.main import create_app
from app.models import Document
from testkit.auth_helpers import AuthenticatedCaller
from testkit.factories import give_tenant_key
from tests.test_api.conftest import API, Api, Tenants, document_body

PAYLOAD = os.urandom(1_500_000)  # over the 1 MiB JSON body limit, 23 envelope segments


@pytest.fixture
def api(content_client: httpx.AsyncClient, admin_sessions: async_sessionmaker[AsyncSession]) -> Api:
    """The API helpers over an app that stores content."""
    return Api(content_client, admin_sessions)


@pytest.fixture
async def keyed(
    tenants: Tenants,
    admin_sessions: async_sessionmaker[AsyncSession],
    key_manager: OpenBaoTransitKeyManager,
) -> Tenants:
    """Both tenants with their own keys, as `create-tenant` provisions them."""
    for caller in (tenants.admin, tenants.other):
        await give_tenant_key(admin_sessions, key_manager, caller.tenant.id)
    return tenants


def content_url(document_id: object) -> str:
    return f"{API}/documents/{document_id}/content"


async def register(api: Api, caller: AuthenticatedCaller, data: bytes, **fields: Any) -> str:
    """Register a document for `data` (size and type declared) and return its id."""
    values: dict[str, Any] = {"size_bytes": len(data), "content_type": "application/pdf"}
    values.update(fields)
    document = await api.create_document(caller, **values)
    return str(document["id"])


async def upload(
    api: Api,
    caller: AuthenticatedCaller,
    document_id: str,
    data: bytes,
    content_type: str = "application/pdf",
    **headers: str,
) -> httpx.Response:
    return await api.client.put(
        content_url(document_id),
        content=data,
        headers={**caller.headers, "Content-Type": content_type, **headers},
    )


async def stored_objects(store: S3ObjectStore, tenant: uuid.UUID, document_id: str) -> list[str]:
    """Keys of every object stored for the document."""
    prefix = f"tenants/{tenant}/documents/{document_id}/"
    return [info.key async for info in store.list(prefix)]


async def row(admin_sessions: async_sessionmaker[AsyncSession], document_id: str) -> Document:
    async with admin_transaction(admin_sessions) as session:
        document = await session.scalar(select(Document).where(Document.id == document_id))
    assert document is not None
    return document


async def assert_nothing_stored(
    api: Api,
    store: S3ObjectStore,
    admin_sessions: async_sessionmaker[AsyncSession],
    tenant: uuid.UUID,
    document_id: str,
) -> None:
    """No object, the row still `processing` without content, no content audit row."""
    assert await stored_objects(store, tenant, document_id) == []
    document = await row(admin_sessions, document_id)
    assert (document.status, document.content_object_key) == ("processing", None)
    assert document.content_wrapped_key is None
    actions = {r.action for r in await api.audit_rows(tenant, resource_id=document.id)}
    assert "document.content_upload" not in actions


async def test_upload_then_download_gives_the_same_bytes_encrypted_at_rest(
    api: Api,
    keyed: Tenants,
    object_store: S3ObjectStore,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    caller = keyed.member
    document_id = await register(api, caller, PAYLOAD, filename='Bericht März "1".pdf')
    response = await upload(api, caller, document_id, PAYLOAD)
    assert response.status_code == 200, response.text
    body = response.json()
    sha256 = hashlib.sha256(PAYLOAD).hexdigest()
    # Processing until the ingestion worker makes it searchable (tests/test_ingest).
    assert (body["status"], body["content_sha256"]) == ("processing", sha256)
    assert body["content_uploaded_at"] is not None

    download = await api.client.get(content_url(document_id), headers=caller.headers)
    assert download.status_code == 200, download.text
    assert download.content == PAYLOAD
    assert download.headers["content-type"] == "application/pdf"
    assert download.headers["content-length"] == str(len(PAYLOAD))
    assert download.headers["etag"] == f'"{sha256}"'
    assert download.headers["last-modified"].endswith("GMT")
    assert download.headers["content-disposition"] == (
        'attachment; filename="Bericht M_rz _1_.pdf";'
        " filename*=UTF-8''Bericht%20M%C3%A4rz%20%221%22.pdf"
    )
    assert download.headers["cache-control"] == "no-store"

    # At rest: one object, ciphertext of the expected size, no plaintext in it.
    document = await row(admin_sessions, document_id)
    (key,) = await stored_objects(object_store, caller.tenant.id, document_id)
    assert key == document.content_object_key
    assert document.content_key_ref == f"tenant-{caller.tenant.id}"
    assert document.content_key_version == 1
    assert document.content_wrapped_key is not None
    assert document.content_wrapped_key.startswith(b"vault:v1:")
    stored = b"".join([chunk async for chunk in await object_store.get_stream(key)])
    assert len(stored) == sealed_size(len(PAYLOAD))
    assert PAYLOAD[:64] not in stored
    assert PAYLOAD[-64:] not in stored


async def test_every_upload_and_download_is_audited_with_the_caller(
    api: Api, keyed: Tenants
) -> None:
    caller = keyed.member
    data = b"%PDF-1.7 tiny"
    document_id = await register(api, caller, data)
    assert (await upload(api, caller, document_id, data)).status_code == 200
    for _ in range(2):
        response = await api.client.get(content_url(document_id), headers=caller.headers)
        assert response.status_code == 200
    rows = await api.audit_rows(caller.tenant.id, resource_id=uuid.UUID(document_id))
    actions = [r.action for r in rows]
    assert actions == [
        "document.create",
        "document.content_upload",
        "document.content_download",
        "document.content_download",
    ]
    assert {r.user_id for r in rows} == {caller.user.id}
    assert "content_sha256" in rows[1].metadata_["changed"]
    # The status stays `processing` (the ingestion job moves it): not a changed field.
    assert "content_object_key" in rows[1].metadata_["changed"]
    assert "status" not in rows[1].metadata_["changed"]


async def test_a_current_etag_gets_304_without_a_body(api: Api, keyed: Tenants) -> None:
    caller = keyed.admin
    data = b"hello"
    document_id = await register(api, caller, data, content_type="text/plain")
    assert (await upload(api, caller, document_id, data, "text/plain")).status_code == 200
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    response = await api.client.get(
        content_url(document_id), headers={**caller.headers, "If-None-Match": f'"x", W/{etag}'}
    )
    assert (response.status_code, response.content) == (304, b"")
    assert response.headers["etag"] == etag
    stale = await api.client.get(
        content_url(document_id), headers={**caller.headers, "If-None-Match": '"other"'}
    )
    assert (stale.status_code, stale.content) == (200, data)


async def test_an_empty_file_round_trips(api: Api, keyed: Tenants) -> None:
    caller = keyed.admin
    document_id = await register(api, caller, b"")
    assert (await upload(api, caller, document_id, b"")).status_code == 200
    response = await api.client.get(content_url(document_id), headers=caller.headers)
    assert (response.status_code, response.content) == (200, b"")


async def test_a_body_in_chunks_without_content_length_is_streamed_in(
    api: Api, keyed: Tenants
) -> None:
    caller = keyed.admin
    document_id = await register(api, caller, PAYLOAD)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(PAYLOAD), 100_000):
            yield PAYLOAD[start : start + 100_000]

    response = await api.client.put(
        content_url(document_id),
        content=chunks(),
        headers={**caller.headers, "Content-Type": "application/pdf"},
    )
    assert response.status_code == 200, response.text
    download = await api.client.get(content_url(document_id), headers=caller.headers)
    assert download.content == PAYLOAD


async def test_wrong_content_type_is_415_and_nothing_stored(
    api: Api,
    keyed: Tenants,
    object_store: S3ObjectStore,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    caller = keyed.admin
    document_id = await register(api, caller, b"abc")
    for content_type in ("text/html", "application/json", ""):
        response = await upload(api, caller, document_id, b"abc", content_type)
        assert response.status_code == 415, response.text
        assert "application/pdf" in response.json()["error"]["message"]
    await assert_nothing_stored(api, object_store, admin_sessions, caller.tenant.id, document_id)
    # Parameters and case do not matter: the media type does.
    ok = await upload(api, caller, document_id, b"abc", "Application/PDF; name=x")
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("sent", [b"abcd", b"ab", b"abcdefgh"])
async def test_a_length_other_than_registered_is_422_and_nothing_stored(
    api: Api,
    keyed: Tenants,
    object_store: S3ObjectStore,
    admin_sessions: async_sessionmaker[AsyncSession],
    sent: bytes,
) -> None:
    caller = keyed.admin
    document_id = await register(api, caller, b"abc")
    response = await upload(api, caller, document_id, sent)
    assert response.status_code == 422, response.text
    assert "size_bytes 3" in response.json()["error"]["message"]

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield sent[:1]
        yield sent[1:]

    chunked = await api.client.put(
        content_url(document_id),
        content=streamed(),
        headers={**caller.headers, "Content-Type": "application/pdf"},
    )
    assert chunked.status_code == 422, chunked.text
    await assert_nothing_stored(api, object_store, admin_sessions, caller.tenant.id, document_id)


async def test_other_tenants_and_deleted_documents_are_404_and_nothing_stored(
    api: Api,
    keyed: Tenants,
    object_store: S3ObjectStore,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    theirs = keyed.other_document
    data = b"x" * theirs["size_bytes"]
    response = await upload(api, keyed.admin, theirs["id"], data)
    assert response.status_code == 404, response.text
    await assert_nothing_stored(
        api, object_store, admin_sessions, keyed.other.tenant.id, theirs["id"]
    )
    assert (
        await api.client.get(content_url(theirs["id"]), headers=keyed.admin.headers)
    ).status_code == 404

    document_id = await register(api, keyed.admin, b"abc")
    deleted = await api.client.delete(f"{API}/documents/{document_id}", headers=keyed.admin.headers)
    assert deleted.status_code == 204
    assert (await upload(api, keyed.admin, document_id, b"abc")).status_code == 404
    document = await row(admin_sessions, document_id)
    assert document.content_object_key is None
    assert await stored_objects(object_store, keyed.admin.tenant.id, document_id) == []


async def test_content_is_written_once(api: Api, keyed: Tenants) -> None:
    caller = keyed.admin
    document_id = await register(api, caller, b"abc")
    assert (await upload(api, caller, document_id, b"abc")).status_code == 200
    again = await upload(api, caller, document_id, b"xyz")
    assert again.status_code == 409, again.text
    download = await api.client.get(content_url(document_id), headers=caller.headers)
    assert download.content == b"abc"


async def test_only_processing_documents_take_content(api: Api, keyed: Tenants) -> None:
    caller = keyed.admin
    document_id = await register(api, caller, b"abc")
    failed = await api.client.patch(
        f"{API}/documents/{document_id}", json={"status": "failed"}, headers=caller.headers
    )
    assert failed.status_code == 200
    response = await upload(api, caller, document_id, b"abc")
    assert response.status_code == 409
    assert "processing" in response.json()["error"]["message"]


async def test_a_document_without_content_has_nothing_to_download(api: Api, keyed: Tenants) -> None:
    document_id = await register(api, keyed.admin, b"abc")
    response = await api.client.get(content_url(document_id), headers=keyed.admin.headers)
    assert response.status_code == 409
    assert "no content" in response.json()["error"]["message"]


async def test_a_tenant_without_a_key_is_told_so(
    api: Api,
    tenants: Tenants,
    object_store: S3ObjectStore,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    document_id = await register(api, tenants.admin, b"abc")
    response = await upload(api, tenants.admin, document_id, b"abc")
    assert response.status_code == 409
    assert "provision-tenant-key" in response.json()["error"]["message"]
    await assert_nothing_stored(
        api, object_store, admin_sessions, tenants.admin.tenant.id, document_id
    )


async def test_content_over_its_own_limit_is_413(
    settings: Settings,
    database: Database,
    content_backends: ContentBackends,
    keyed: Tenants,
    api: Api,
    object_store: S3ObjectStore,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    limit = 1024 * 1024
    app = create_app(
        settings.model_copy(update={"MAX_DOCUMENT_CONTENT_BYTES": limit}),
        database,
        content=content_backends,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        limited = Api(client, admin_sessions)
        caller = keyed.admin
        big = await register(limited, caller, b"", size_bytes=limit + 1)
        response = await upload(limited, caller, big, b"x" * (limit + 1))
        assert response.status_code == 413, response.text
        assert str(limit) in response.json()["error"]["message"]
        await assert_nothing_stored(api, object_store, admin_sessions, caller.tenant.id, big)
        # At the limit it fits (the JSON body limit, also 1 MiB here, does not apply).
        fits = await register(limited, caller, b"", size_bytes=limit)
        assert (await upload(limited, caller, fits, b"y" * limit)).status_code == 200


async def test_the_json_routes_keep_their_body_limit(api: Api, keyed: Tenants) -> None:
    body = document_body(metadata={"blob": "x" * (1024 * 1024)})
    response = await api.client.post(f"{API}/documents", json=body, headers=keyed.admin.headers)
    assert response.status_code == 413


async def test_openapi_documents_both_routes_with_examples(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    path = spec["paths"][f"{API}/documents/{{document_id}}/content"]
    put = path["put"]
    assert put["requestBody"]["content"]["*/*"]["example"]
    assert {"200", "404", "409", "413", "415", "422", "503"} <= set(put["responses"])
    get = path["get"]
    ok = get["responses"]["200"]
    assert ok["content"]["application/octet-stream"]["example"]
    assert {"Content-Disposition", "ETag"} <= set(ok["headers"])
    assert {"304", "404", "409", "503"} <= set(get["responses"])


async def test_an_upload_retried_with_its_idempotency_key_replays_and_stores_once(
    api: Api, keyed: Tenants, object_store: S3ObjectStore
) -> None:
    """Issue 21: the key covers the streamed body through its Content-Digest (RFC 9530)."""
    caller = keyed.admin
    document_id = await register(api, caller, PAYLOAD)
    digest = f"sha-256=:{base64.b64encode(hashlib.sha256(PAYLOAD).digest()).decode()}:"
    keyed_headers = {"Idempotency-Key": str(uuid.uuid4()), "Content-Digest": digest}
    first = await upload(api, caller, document_id, PAYLOAD, **keyed_headers)
    assert first.status_code == 200, first.text
    again = await upload(api, caller, document_id, PAYLOAD, **keyed_headers)
    assert again.status_code == 200, again.text  # without the key: 409, content is write-once
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    other = {**keyed_headers, "Content-Digest": "sha-256=:" + "A" * 43 + "=:"}
    reused = await upload(api, caller, document_id, PAYLOAD, **other)
    assert reused.status_code == 422, reused.text
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert len(await stored_objects(object_store, caller.tenant.id, document_id)) == 1
    actions = [
        r.action for r in await api.audit_rows(caller.tenant.id, resource_id=uuid.UUID(document_id))
    ]
    assert actions.count("document.content_upload") == 1
