"""GET /audit-logs: the tenant's events only, filters, newest first, paginated; no write routes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_api.conftest import API, Api, Tenants

AUDIT = f"{API}/audit-logs"


async def _events(api: Api, tenants: Tenants, **params: Any) -> list[dict[str, Any]]:
    return await api.all_pages(AUDIT, tenants.admin, params)


async def test_admins_read_their_tenants_events_newest_first(api: Api, tenants: Tenants) -> None:
    document = await api.create_document(tenants.admin)
    path = f"{API}/documents/{document['id']}"
    assert (
        await api.client.patch(path, json={"status": "completed"}, headers=tenants.member.headers)
    ).status_code == 200
    assert (await api.client.delete(path, headers=tenants.member.headers)).status_code == 204

    events = await _events(api, tenants)
    assert [(event["action"], event["resource_id"]) for event in events] == [
        ("document.delete", document["id"]),
        ("document.update", document["id"]),
        ("document.create", document["id"]),
    ]
    newest = events[0]
    assert newest["user_id"] == str(tenants.member.user.id)
    assert newest["resource_type"] == "document"
    assert newest["ip_address"] == "127.0.0.1"
    assert newest["user_agent"].startswith("python-httpx/")
    assert newest["metadata"]["changed"] == ["deleted_at"]
    assert newest["metadata"]["request_id"]
    assert events[1]["metadata"]["changed"] == ["status"]
    # Tenant B sees only its own document's creation.
    theirs = await api.all_pages(AUDIT, tenants.other)
    assert [(event["action"], event["resource_id"]) for event in theirs] == [
        ("document.create", tenants.other_document["id"])
    ]


async def test_members_read_only_their_own_actions_rows(api: Api, tenants: Tenants) -> None:
    """Minimum necessary (docs/SECURITY.md): no other user's IP, user agent or activity."""
    admins = await api.create_document(tenants.admin)
    deleted_path = f"{API}/documents/{admins['id']}"
    assert (await api.client.delete(deleted_path, headers=tenants.admin.headers)).status_code == 204
    own = await api.create_document(tenants.member)
    admin_agent = {"User-Agent": "admin-console/9.9"}
    patched = await api.client.patch(
        f"{API}/documents/{own['id']}",
        json={"status": "failed"},
        headers={**tenants.admin.headers, **admin_agent},
    )
    assert patched.status_code == 200

    seen = await api.all_pages(AUDIT, tenants.member, {"limit": 1})
    assert [(e["action"], e["resource_id"]) for e in seen] == [("document.create", own["id"])]
    assert {e["user_id"] for e in seen} == {str(tenants.member.user.id)}
    assert seen[0]["ip_address"] == "127.0.0.1"  # their own request's address
    # Filters narrow the member's view; they never widen it.
    for params in (
        {"user_id": str(tenants.admin.user.id)},
        {"resource_id": admins["id"]},
        {"resource_id": own["id"], "action": "document.update"},
    ):
        assert await api.all_pages(AUDIT, tenants.member, params) == [], params
    # The admin sees every row, the admin's user agent included.
    everything = await _events(api, tenants)
    assert {e["user_id"] for e in everything} == {
        str(tenants.admin.user.id),
        str(tenants.member.user.id),
    }
    assert "admin-console/9.9" in {e["user_agent"] for e in everything}
    # An admin's cursor does not continue a member's listing (another view, another query).
    admin_page = await api.client.get(AUDIT, params={"limit": 1}, headers=tenants.admin.headers)
    cursor = admin_page.json()["next_cursor"]
    assert cursor is not None
    refused = await api.client.get(AUDIT, params={"cursor": cursor}, headers=tenants.member.headers)
    assert refused.status_code == 422


async def test_filters(api: Api, tenants: Tenants) -> None:
    first = await api.create_document(tenants.admin)
    second = await api.create_document(tenants.member)
    patched = await api.client.patch(
        f"{API}/documents/{first['id']}", json={"status": "failed"}, headers=tenants.admin.headers
    )
    assert patched.status_code == 200
    created_user = await api.client.post(
        f"{API}/users", json={"email": "filters@example.org"}, headers=tenants.admin.headers
    )
    assert created_user.status_code == 201
    events = await _events(api, tenants)
    assert len(events) == 4

    def actions(items: list[dict[str, Any]]) -> list[str]:
        return [item["action"] for item in items]

    assert actions(await _events(api, tenants, action="document.create")) == [
        "document.create",
        "document.create",
    ]
    assert actions(await _events(api, tenants, resource_type="user")) == ["user.create"]
    assert actions(await _events(api, tenants, resource_id=first["id"])) == [
        "document.update",
        "document.create",
    ]
    assert actions(await _events(api, tenants, user_id=str(tenants.member.user.id))) == [
        "document.create"
    ]
    assert [
        e["resource_id"] for e in await _events(api, tenants, user_id=tenants.member.user.id)
    ] == [second["id"]]
    # Time range: from the patch (inclusive) to the user creation (exclusive).
    patch_time = events[1]["created_at"]
    user_time = events[0]["created_at"]
    assert actions(
        await _events(api, tenants, created_after=patch_time, created_before=user_time)
    ) == ["document.update"]
    assert actions(await _events(api, tenants, created_after=user_time)) == ["user.create"]
    assert len(await _events(api, tenants, created_before=patch_time)) == 2
    # Another tenant's ids filter to nothing, not to their events.
    assert await _events(api, tenants, user_id=str(tenants.other.user.id)) == []
    assert await _events(api, tenants, resource_id=tenants.other_document["id"]) == []
    assert await _events(api, tenants, action="no.such.action") == []


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_there_is_no_way_to_write_the_audit_log(
    api: Api, tenants: Tenants, method: str
) -> None:
    await api.create_document(tenants.admin)
    [event] = await _events(api, tenants)
    before = await api.counts()
    for path in (AUDIT, f"{AUDIT}/{event['id']}"):
        response = await api.client.request(
            method, path, json={"action": "forged"}, headers=tenants.admin.headers
        )
        assert response.status_code in {404, 405}, (path, response.status_code)
        if path == AUDIT:
            assert response.status_code == 405
            assert response.json()["error"]["code"] == "method_not_allowed"
    assert await api.counts() == before
    assert await _events(api, tenants) == [event]
