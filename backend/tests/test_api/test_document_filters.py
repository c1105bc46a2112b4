"""GET /documents filters: status, content type, creation range, metadata containment."""

from __future__ import annotations

import json
from typing import Any

from tests.test_api.conftest import API, Api, Tenants

DOCS = f"{API}/documents"


async def _ids(api: Api, tenants: Tenants, **params: Any) -> list[str]:
    return [item["id"] for item in await api.all_pages(DOCS, tenants.member, params)]


async def test_metadata_containment_filter(api: Api, tenants: Tenants) -> None:
    ecg = await api.create_document(
        tenants.member,
        metadata={"department": "cardiology", "tags": ["ecg", "urgent"], "ward": {"floor": 3}},
    )
    echo = await api.create_document(
        tenants.member, metadata={"department": "cardiology", "tags": ["echo"]}
    )
    other = await api.create_document(tenants.member, metadata={"department": "oncology"})

    def contains(value: dict[str, Any]) -> str:
        return json.dumps(value)

    # Newest first; tenant B's cardiology document never shows up.
    assert await _ids(api, tenants, metadata=contains({"department": "cardiology"})) == [
        echo["id"],
        ecg["id"],
    ]
    assert await _ids(api, tenants, metadata=contains({"tags": ["urgent"]})) == [ecg["id"]]
    assert await _ids(api, tenants, metadata=contains({"ward": {"floor": 3}})) == [ecg["id"]]
    assert await _ids(api, tenants, metadata=contains({"ward": {"floor": 4}})) == []
    assert await _ids(api, tenants, metadata=contains({"department": "oncology"})) == [other["id"]]
    # The empty object is contained in every document's metadata.
    assert await _ids(api, tenants, metadata="{}") == [other["id"], echo["id"], ecg["id"]]


async def test_status_and_content_type_filters(api: Api, tenants: Tenants) -> None:
    pdf = await api.create_document(tenants.member, content_type="application/pdf")
    png = await api.create_document(tenants.member, content_type="image/png")
    failed = await api.client.patch(
        f"{DOCS}/{png['id']}", json={"status": "failed"}, headers=tenants.member.headers
    )
    assert failed.status_code == 200
    assert await _ids(api, tenants, status="failed") == [png["id"]]
    assert await _ids(api, tenants, status="processing") == [pdf["id"]]
    assert await _ids(api, tenants, status="completed") == []
    assert await _ids(api, tenants, content_type="image/png") == [png["id"]]
    assert await _ids(api, tenants, content_type="image/png", status="processing") == []


async def test_created_range_includes_its_start_and_excludes_its_end(
    api: Api, tenants: Tenants
) -> None:
    first, second, third = [await api.create_document(tenants.member) for _ in range(3)]
    assert first["created_at"] < second["created_at"] < third["created_at"]
    assert await _ids(api, tenants, created_after=second["created_at"]) == [
        third["id"],
        second["id"],
    ]
    assert await _ids(api, tenants, created_before=second["created_at"]) == [first["id"]]
    assert await _ids(
        api, tenants, created_after=first["created_at"], created_before=third["created_at"]
    ) == [second["id"], first["id"]]
    # Times with an explicit offset mean the same instants.
    assert await _ids(api, tenants, created_after="2000-01-01T00:00:00+05:00") == [
        third["id"],
        second["id"],
        first["id"],
    ]
    assert await _ids(api, tenants, created_before="2000-01-01T00:00:00Z") == []
