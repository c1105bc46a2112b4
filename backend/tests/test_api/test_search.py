"""POST /documents/search: nearest first with distances, k, filters, only the caller's live docs."""

from __future__ import annotations

import math

import pytest

from tests.test_api.conftest import API, Api, Tenants, embedding_towards

SEARCH = f"{API}/documents/search"


async def test_nearest_first_with_cosine_distance_and_k(api: Api, tenants: Tenants) -> None:
    # Angles 0.1 < 0.5 < 1.0 < 2.0 radians from axis 0: cosine distance is 1 - cos(angle).
    angles = {"near": 0.1, "middle": 0.5, "far": 1.0, "opposite-ish": 2.0}
    ids = {}
    for name, angle in angles.items():
        created = await api.create_document(
            tenants.member, filename=f"{name}.pdf", embedding=embedding_towards(0, 1, angle)
        )
        ids[name] = created["id"]
    await api.create_document(tenants.member, filename="no-embedding.pdf")
    before = await api.counts()

    response = await api.client.post(
        SEARCH, json={"embedding": embedding_towards(0), "k": 3}, headers=tenants.member.headers
    )
    assert response.status_code == 200, response.text
    hits = response.json()["items"]
    assert [hit["document"]["id"] for hit in hits] == [ids["near"], ids["middle"], ids["far"]]
    for hit, name in zip(hits, ["near", "middle", "far"], strict=True):
        assert hit["distance"] == pytest.approx(1 - math.cos(angles[name]), abs=1e-5)
        assert hit["document"]["filename"] == f"{name}.pdf"
        assert hit["document"]["has_embedding"] is True

    everything = await api.client.post(
        SEARCH, json={"embedding": embedding_towards(0), "k": 100}, headers=tenants.member.headers
    )
    found = [hit["document"]["id"] for hit in everything.json()["items"]]
    # The other tenant's document points exactly along axis 0 (distance 0): never shown.
    assert found == [ids["near"], ids["middle"], ids["far"], ids["opposite-ish"]]
    assert tenants.other_document["id"] not in found
    assert await api.counts() == before  # searching writes nothing


async def test_default_k_is_ten(api: Api, tenants: Tenants) -> None:
    for index in range(12):
        await api.create_document(tenants.admin, embedding=embedding_towards(0, 1, index / 20))
    response = await api.client.post(
        SEARCH, json={"embedding": embedding_towards(0)}, headers=tenants.admin.headers
    )
    assert len(response.json()["items"]) == 10


async def test_filters_narrow_the_candidates(api: Api, tenants: Tenants) -> None:
    headers = tenants.admin.headers
    cardiology = await api.create_document(
        tenants.admin,
        embedding=embedding_towards(0, 1, 0.3),
        metadata={"department": "cardiology", "tags": ["urgent", "ecg"]},
        content_type="image/png",
    )
    oncology = await api.create_document(
        tenants.admin,
        embedding=embedding_towards(0, 1, 0.1),
        metadata={"department": "oncology"},
    )
    completed = await api.client.patch(
        f"{API}/documents/{oncology['id']}", json={"status": "completed"}, headers=headers
    )
    assert completed.status_code == 200

    async def search(filters: dict[str, object]) -> list[str]:
        response = await api.client.post(
            SEARCH, json={"embedding": embedding_towards(0), "filters": filters}, headers=headers
        )
        assert response.status_code == 200, response.text
        return [hit["document"]["id"] for hit in response.json()["items"]]

    assert await search({}) == [oncology["id"], cardiology["id"]]
    assert await search({"metadata": {"department": "cardiology"}}) == [cardiology["id"]]
    assert await search({"metadata": {"tags": ["ecg"]}}) == [cardiology["id"]]
    assert await search({"status": "completed"}) == [oncology["id"]]
    assert await search({"status": "processing"}) == [cardiology["id"]]
    assert await search({"content_type": "image/png"}) == [cardiology["id"]]
    assert await search({"content_type": "image/png", "status": "completed"}) == []
    # Tenant B's document has department cardiology and the exact query direction: not here.
    assert await search({"metadata": {"department": "cardiology"}, "status": "processing"}) == [
        cardiology["id"]
    ]


async def test_soft_deleted_documents_never_appear(api: Api, tenants: Tenants) -> None:
    gone = await api.create_document(tenants.member, embedding=embedding_towards(0))
    kept = await api.create_document(tenants.member, embedding=embedding_towards(0, 1, 0.4))
    deleted = await api.client.delete(
        f"{API}/documents/{gone['id']}", headers=tenants.member.headers
    )
    assert deleted.status_code == 204
    for caller in (tenants.member, tenants.admin):
        response = await api.client.post(
            SEARCH, json={"embedding": embedding_towards(0), "k": 100}, headers=caller.headers
        )
        assert [hit["document"]["id"] for hit in response.json()["items"]] == [kept["id"]]


async def test_each_tenant_searches_only_its_own_documents(api: Api, tenants: Tenants) -> None:
    for caller, expected in (
        (tenants.admin, []),
        (tenants.other, [tenants.other_document["id"]]),
    ):
        response = await api.client.post(
            SEARCH, json={"embedding": embedding_towards(0), "k": 100}, headers=caller.headers
        )
        assert response.status_code == 200, response.text
        assert [hit["document"]["id"] for hit in response.json()["items"]] == expected
