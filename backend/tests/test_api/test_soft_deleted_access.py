"""Soft-deleted rows are for admins only: every route that reaches them refuses members (403).

The rule is checked on the route before any lookup, so a member's 403 is the same for a real
id as for a random one: it says nothing about which deleted rows exist (docs/SECURITY.md).
"""

from __future__ import annotations

import uuid

from app.core.config import Settings
from app.main import create_app
from tests.test_api.conftest import API, Api, Tenants


def _routes_reaching_deleted_rows(settings: Settings) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path, query) of every API operation that can reach a soft-deleted row.

    Read from the OpenAPI document, so a new restore route or `include_deleted` parameter is
    covered without editing this test.
    """
    found = []
    for path, operations in create_app(settings).openapi()["paths"].items():
        for method, operation in operations.items():
            names = {parameter["name"] for parameter in operation.get("parameters", [])}
            if path.endswith("/restore"):
                found.append((method.upper(), path, {}))
            if "include_deleted" in names:
                found.append((method.upper(), path, {"include_deleted": "true"}))
    return found


def _with_ids(path: str, row_id: str) -> str:
    return path.replace("{document_id}", row_id).replace("{user_id}", row_id)


def test_the_walk_finds_the_known_routes(settings: Settings) -> None:
    found = {(method, path) for method, path, _ in _routes_reaching_deleted_rows(settings)}
    assert {
        ("POST", f"{API}/documents/{{document_id}}/restore"),
        ("POST", f"{API}/users/{{user_id}}/restore"),
        ("GET", f"{API}/documents"),
        ("GET", f"{API}/documents/{{document_id}}"),
        ("GET", f"{API}/users"),
        ("GET", f"{API}/users/{{user_id}}"),
    } <= found


async def test_members_are_refused_on_every_route_that_reaches_deleted_rows(
    api: Api, tenants: Tenants, settings: Settings
) -> None:
    document = await api.create_document(tenants.admin)
    deleted_path = f"{API}/documents/{document['id']}"
    assert (await api.client.delete(deleted_path, headers=tenants.admin.headers)).status_code == 204
    before = await api.counts()
    for method, path, params in _routes_reaching_deleted_rows(settings):
        for row_id in (document["id"], str(uuid.uuid4())):
            response = await api.client.request(
                method, _with_ids(path, row_id), params=params, headers=tenants.member.headers
            )
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "forbidden"
    assert await api.counts() == before
    still_deleted = await api.client.get(
        deleted_path, params={"include_deleted": "true"}, headers=tenants.admin.headers
    )
    assert still_deleted.json()["deleted_at"] is not None


async def test_a_member_cannot_restore_a_document_an_admin_deleted(
    api: Api, tenants: Tenants
) -> None:
    document = await api.create_document(tenants.member, metadata={"diagnosis": "private"})
    path = f"{API}/documents/{document['id']}"
    assert (await api.client.delete(path, headers=tenants.admin.headers)).status_code == 204

    refused = await api.client.post(f"{path}/restore", headers=tenants.member.headers)
    assert refused.status_code == 403, refused.text
    assert "diagnosis" not in refused.text
    assert (await api.client.get(path, headers=tenants.member.headers)).status_code == 404

    restored = await api.client.post(f"{path}/restore", headers=tenants.admin.headers)
    assert restored.status_code == 200, restored.text
    assert restored.json()["deleted_at"] is None
    assert (await api.client.get(path, headers=tenants.member.headers)).status_code == 200
