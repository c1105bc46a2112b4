"""Documents over HTTP: register, read, change, soft-delete, restore; each change audited once."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.database import Database
from app.main import create_app
from app.services import audit as audit_service
from app.services import documents as documents_service
from tests.test_api.conftest import (
    API,
    Api,
    Tenants,
    document_body,
    embedding_towards,
    error_without_request_id,
)

CLIENT_HEADERS = {"User-Agent": "records-sync/2.1", "X-Request-ID": "req-documents-0001"}


def _with(headers: dict[str, str], request_id: str | None = None) -> dict[str, str]:
    extra = dict(CLIENT_HEADERS)
    if request_id is not None:
        extra["X-Request-ID"] = request_id
    return {**headers, **extra}


async def test_register_returns_the_document_processing_and_audits_field_names_only(
    api: Api, tenants: Tenants
) -> None:
    before = await api.counts()
    body = document_body(
        metadata={"patient_ref": "P-1042", "diagnosis": "secret-diagnosis"},
        embedding=embedding_towards(3),
    )
    response = await api.client.post(
        f"{API}/documents", json=body, headers=_with(tenants.admin.headers)
    )
    assert response.status_code == 201, response.text
    document = response.json()
    assert document["status"] == "processing"
    assert document["user_id"] == str(tenants.admin.user.id)
    assert document["has_embedding"] is True
    assert "embedding" not in document
    assert "embedding_vector" not in document
    for field in ("filename", "content_type", "size_bytes", "s3_bucket", "s3_key", "metadata"):
        assert document[field] == body[field]
    assert document["deleted_at"] is None

    after = await api.counts()
    assert (after.documents, after.audit_logs) == (before.documents + 1, before.audit_logs + 1)
    [entry] = await api.audit_rows(tenants.admin.tenant.id, resource_id=uuid.UUID(document["id"]))
    assert entry.action == "document.create"
    assert entry.resource_type == "document"
    assert entry.user_id == tenants.admin.user.id
    assert str(entry.ip_address) == "127.0.0.1"
    assert entry.user_agent == "records-sync/2.1"
    assert entry.metadata_ == {
        "source": "api",
        "request_id": "req-documents-0001",
        "changed": sorted(
            [
                "filename",
                "content_type",
                "size_bytes",
                "s3_bucket",
                "s3_key",
                "metadata",
                "embedding",
                "status",
            ]
        ),
    }
    # Names only: no value the client sent is in the audit row.
    stored = json.dumps(entry.metadata_) + str(entry.user_agent)
    for secret in ("P-1042", "secret-diagnosis", body["s3_key"], body["filename"], "0.0"):
        assert secret not in stored


async def test_get_and_list_show_only_the_callers_tenant(api: Api, tenants: Tenants) -> None:
    mine = await api.create_document(tenants.member)
    response = await api.client.get(f"{API}/documents/{mine['id']}", headers=tenants.admin.headers)
    assert response.status_code == 200, response.text
    assert response.json() == mine
    listed = await api.all_pages(f"{API}/documents", tenants.member)
    assert [item["id"] for item in listed] == [mine["id"]]
    theirs = await api.all_pages(f"{API}/documents", tenants.other)
    assert [item["id"] for item in theirs] == [tenants.other_document["id"]]


async def test_patch_changes_the_given_fields_and_audits_their_names(
    api: Api, tenants: Tenants
) -> None:
    document = await api.create_document(tenants.member)
    path = f"{API}/documents/{document['id']}"
    before = await api.counts()

    response = await api.client.patch(
        path,
        json={"status": "completed", "metadata": {"reviewed": True}},
        headers=_with(tenants.member.headers, "req-patch-000001"),
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["status"] == "completed"
    assert changed["metadata"] == {"reviewed": True}
    assert changed["has_embedding"] is False
    assert changed["updated_at"] >= document["updated_at"]

    response = await api.client.patch(
        path, json={"embedding": embedding_towards(5)}, headers=tenants.member.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["has_embedding"] is True
    response = await api.client.patch(
        path, json={"embedding": None}, headers=tenants.member.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["has_embedding"] is False
    assert (await api.client.get(path, headers=tenants.member.headers)).json()[
        "has_embedding"
    ] is False

    after = await api.counts()
    assert after.audit_logs == before.audit_logs + 3
    assert after.documents == before.documents
    updates = await api.audit_rows(
        tenants.member.tenant.id, action="document.update", resource_id=uuid.UUID(document["id"])
    )
    assert [entry.metadata_["changed"] for entry in updates] == [
        ["metadata", "status"],
        ["embedding"],
        ["embedding"],
    ]
    assert updates[0].metadata_["request_id"] == "req-patch-000001"
    assert all(entry.user_id == tenants.member.user.id for entry in updates)
    assert "reviewed" not in json.dumps([entry.metadata_ for entry in updates])


async def test_patch_that_changes_nothing_writes_no_audit_row(api: Api, tenants: Tenants) -> None:
    document = await api.create_document(tenants.admin, metadata={"a": 1})
    before = await api.counts()
    response = await api.client.patch(
        f"{API}/documents/{document['id']}",
        json={"status": "processing", "metadata": {"a": 1}},
        headers=tenants.admin.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["updated_at"] == document["updated_at"]
    assert await api.counts() == before


async def test_delete_hides_the_document_and_restore_brings_it_back(
    api: Api, tenants: Tenants
) -> None:
    document = await api.create_document(tenants.member, embedding=embedding_towards(0))
    path = f"{API}/documents/{document['id']}"
    headers = tenants.member.headers
    before = await api.counts()

    deleted = await api.client.delete(path, headers=headers)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert (await api.client.get(path, headers=headers)).status_code == 404
    assert (
        await api.client.patch(path, json={"status": "failed"}, headers=headers)
    ).status_code == 404
    assert (await api.client.delete(path, headers=headers)).status_code == 404
    assert await api.all_pages(f"{API}/documents", tenants.member) == []
    search = await api.client.post(
        f"{API}/documents/search", json={"embedding": embedding_towards(0)}, headers=headers
    )
    assert search.json()["items"] == []

    # Restoring is for admins (soft-deleted rows are admin-only: test_soft_deleted_access).
    admin_headers = tenants.admin.headers
    restored = await api.client.post(f"{path}/restore", headers=admin_headers)
    assert restored.status_code == 200, restored.text
    assert restored.json()["deleted_at"] is None
    assert (await api.client.get(path, headers=headers)).status_code == 200
    # Restoring an active document is a no-op: 200, nothing written.
    again = await api.client.post(f"{path}/restore", headers=admin_headers)
    assert again.status_code == 200
    assert again.json()["deleted_at"] is None

    after = await api.counts()
    assert after.documents == before.documents  # soft delete: the row stayed
    assert after.audit_logs == before.audit_logs + 2
    rows = await api.audit_rows(tenants.member.tenant.id, resource_id=uuid.UUID(document["id"]))
    assert [(entry.action, entry.metadata_["changed"]) for entry in rows[1:]] == [
        ("document.delete", ["deleted_at"]),
        ("document.restore", ["deleted_at"]),
    ]


async def test_deleted_documents_are_visible_to_admins_who_ask_and_forbidden_to_members(
    api: Api, tenants: Tenants
) -> None:
    document = await api.create_document(tenants.admin)
    path = f"{API}/documents/{document['id']}"
    assert (await api.client.delete(path, headers=tenants.admin.headers)).status_code == 204
    params = {"include_deleted": "true"}

    shown = await api.client.get(path, params=params, headers=tenants.admin.headers)
    assert shown.status_code == 200, shown.text
    assert shown.json()["deleted_at"] is not None
    listed = await api.all_pages(f"{API}/documents", tenants.admin, params)
    assert [item["id"] for item in listed] == [document["id"]]

    for response in (
        await api.client.get(path, params=params, headers=tenants.member.headers),
        await api.client.get(f"{API}/documents", params=params, headers=tenants.member.headers),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden"
    # Another tenant's admin asking for deleted ones still sees only their own tenant.
    other_listing = await api.all_pages(f"{API}/documents", tenants.other, params)
    assert [item["id"] for item in other_listing] == [tenants.other_document["id"]]
    hidden = await api.client.get(path, params=params, headers=tenants.other.headers)
    assert hidden.status_code == 404


async def test_another_tenants_document_is_the_same_404_as_a_random_id(
    api: Api, tenants: Tenants
) -> None:
    theirs = tenants.other_document["id"]
    random_id = str(uuid.uuid4())
    before = await api.counts()
    headers = tenants.admin.headers
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "", {}),
        ("GET", "", {"params": {"include_deleted": "true"}}),
        ("PATCH", "", {"json": {"status": "failed"}}),
        ("DELETE", "", {}),
        ("POST", "/restore", {}),
    ]
    for method, suffix, options in calls:
        foreign = await api.client.request(
            method, f"{API}/documents/{theirs}{suffix}", headers=headers, **options
        )
        unknown = await api.client.request(
            method, f"{API}/documents/{random_id}{suffix}", headers=headers, **options
        )
        assert foreign.status_code == unknown.status_code == 404, (method, foreign.text)
        assert error_without_request_id(foreign) == error_without_request_id(unknown)
        assert foreign.headers.get("content-length") == unknown.headers.get("content-length")
    assert await api.counts() == before
    untouched = await api.client.get(f"{API}/documents/{theirs}", headers=tenants.other.headers)
    assert untouched.json() == tenants.other_document


async def test_reads_are_not_audited_by_default(api: Api, tenants: Tenants) -> None:
    document = await api.create_document(tenants.admin)
    before = await api.counts()
    assert (
        await api.client.get(f"{API}/documents/{document['id']}", headers=tenants.admin.headers)
    ).status_code == 200
    await api.all_pages(f"{API}/documents", tenants.admin)
    assert await api.counts() == before


@pytest.fixture
async def reads_audited_client(
    settings: Settings, database: Database
) -> AsyncIterator[httpx.AsyncClient]:
    """A client for an app with AUDIT_DOCUMENT_READS=true."""
    app = create_app(settings.model_copy(update={"AUDIT_DOCUMENT_READS": True}), database)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        yield http


async def test_reads_are_audited_when_the_setting_is_on(
    api: Api, tenants: Tenants, reads_audited_client: httpx.AsyncClient
) -> None:
    document = await api.create_document(tenants.member)
    before = await api.counts()
    response = await reads_audited_client.get(
        f"{API}/documents/{document['id']}",
        headers=_with(tenants.member.headers, "req-read-00000001"),
    )
    assert response.status_code == 200, response.text
    assert (await api.counts()).audit_logs == before.audit_logs + 1
    [entry] = await api.audit_rows(tenants.member.tenant.id, action="document.read")
    assert entry.resource_id == uuid.UUID(document["id"])
    assert entry.user_id == tenants.member.user.id
    assert entry.user_agent == "records-sync/2.1"
    assert entry.metadata_ == {"source": "api", "request_id": "req-read-00000001"}
    # A refused read (another tenant's id) writes nothing.
    refused = await reads_audited_client.get(
        f"{API}/documents/{tenants.other_document['id']}", headers=tenants.member.headers
    )
    assert refused.status_code == 404
    assert (await api.counts()).audit_logs == before.audit_logs + 1
    assert await api.audit_rows(tenants.other.tenant.id, action="document.read") == []


@pytest.fixture
async def unraising_client(
    settings: Settings, database: Database
) -> AsyncIterator[httpx.AsyncClient]:
    """A client that receives the 500 response instead of the server's exception."""
    app = create_app(settings, database)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.mark.parametrize("operation", ["create", "update", "delete", "restore"])
async def test_a_write_whose_audit_fails_leaves_neither_change_nor_audit_row(
    api: Api,
    tenants: Tenants,
    unraising_client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
) -> None:
    document = await api.create_document(tenants.admin, metadata={"v": 1})
    path = f"{API}/documents/{document['id']}"
    if operation == "restore":
        assert (await api.client.delete(path, headers=tenants.admin.headers)).status_code == 204
    before = await api.counts()
    state_before = await api.client.get(
        path, params={"include_deleted": "true"}, headers=tenants.admin.headers
    )

    async def audit_then_fail(*args: Any, **kwargs: Any) -> Any:
        # The change and its audit row are both flushed; then the write fails.
        await audit_service.record_change(*args, **kwargs)
        raise RuntimeError("audit store failed")

    monkeypatch.setattr(documents_service, "record_change", audit_then_fail)
    request: dict[str, tuple[str, str, dict[str, Any]]] = {
        "create": ("POST", f"{API}/documents", {"json": document_body()}),
        "update": ("PATCH", path, {"json": {"status": "failed", "metadata": {"v": 2}}}),
        "delete": ("DELETE", path, {}),
        "restore": ("POST", f"{path}/restore", {}),
    }
    method, url, options = request[operation]
    response = await unraising_client.request(method, url, headers=tenants.admin.headers, **options)
    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["code"], error["message"]) == ("internal_error", "internal error")
    monkeypatch.undo()

    assert await api.counts() == before
    state_after = await api.client.get(
        path, params={"include_deleted": "true"}, headers=tenants.admin.headers
    )
    assert state_after.json() == state_before.json()
