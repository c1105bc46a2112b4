"""Cross-tenant ids and soft-deleted rows over HTTP: another tenant's ids are the same 404 as
random ones, members get 403 for admin operations, soft-deleted documents stay hidden.

The JWT cases live in `tests/test_auth/test_bearer_tokens.py` (see docs/SECURITY.md).
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import admin_transaction
from app.models import User
from tests.test_security.http_world import (
    DOCUMENTS,
    USERS,
    World,
    stored_document,
    unit,
    without_request_id,
)

# Another tenant's ids: the same 404 as a random id ---------------------------------------


def _document_attacks(target: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("GET", f"{DOCUMENTS}/{target}", None),
        ("GET", f"{DOCUMENTS}/{target}?include_deleted=true", None),
        ("PATCH", f"{DOCUMENTS}/{target}", {"status": "failed"}),
        ("DELETE", f"{DOCUMENTS}/{target}", None),
        ("POST", f"{DOCUMENTS}/{target}/restore", None),
    ]


async def test_other_tenants_document_by_id_is_the_same_404_as_a_random_id(
    client: httpx.AsyncClient, world: World, admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    victims = [world.b.document["id"], world.b.deleted_document["id"]]
    before = {victim: await stored_document(admin_sessions, victim) for victim in victims}
    random_id = str(uuid.uuid4())
    for victim in victims:
        for (method, url, body), (_, random_url, _) in zip(
            _document_attacks(victim), _document_attacks(random_id), strict=True
        ):
            attack = await client.request(method, url, json=body, headers=world.a.admin.headers)
            control = await client.request(
                method, random_url, json=body, headers=world.a.admin.headers
            )
            assert attack.status_code == control.status_code == 404, (method, url, attack.text)
            assert without_request_id(attack) == without_request_id(control)
            assert victim not in attack.text
    for victim in victims:
        assert await stored_document(admin_sessions, victim) == before[victim]


async def test_other_tenants_user_by_id_is_the_same_404_as_a_random_id(
    client: httpx.AsyncClient, world: World, admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    victim = str(world.b.member.user.id)
    random_id = str(uuid.uuid4())
    for method, suffix in [("GET", ""), ("DELETE", ""), ("POST", "/restore")]:
        attack = await client.request(
            method, f"{USERS}/{victim}{suffix}", headers=world.a.admin.headers
        )
        control = await client.request(
            method, f"{USERS}/{random_id}{suffix}", headers=world.a.admin.headers
        )
        assert attack.status_code == control.status_code == 404, (method, suffix, attack.text)
        assert without_request_id(attack) == without_request_id(control)
    async with admin_transaction(admin_sessions) as session:
        stored = await session.get(User, world.b.member.user.id)
        assert stored is not None
        assert stored.deleted_at is None


async def test_member_admin_operations_are_403_whatever_the_id(
    client: httpx.AsyncClient, world: World
) -> None:
    for target in [str(world.a.admin.user.id), str(world.b.admin.user.id), str(uuid.uuid4())]:
        for method, suffix in [("DELETE", ""), ("POST", "/restore")]:
            response = await client.request(
                method, f"{USERS}/{target}{suffix}", headers=world.a.member.headers
            )
            assert response.status_code == 403, response.text
    response = await client.post(
        USERS, json={"email": "new@example.org"}, headers=world.a.member.headers
    )
    assert response.status_code == 403


# Soft-deleted documents -------------------------------------------------------------------


async def test_soft_deleted_documents_stay_out_of_list_get_and_search(
    client: httpx.AsyncClient, world: World
) -> None:
    deleted_id = world.a.deleted_document["id"]
    for caller in (world.a.admin, world.a.member):
        listed = await client.get(DOCUMENTS, headers=caller.headers)
        assert listed.status_code == 200
        ids = [item["id"] for item in listed.json()["items"]]
        assert ids == [world.a.document["id"]]
        got = await client.get(f"{DOCUMENTS}/{deleted_id}", headers=caller.headers)
        assert got.status_code == 404
        filtered = await client.get(
            DOCUMENTS, params={"metadata": '{"department":"gone"}'}, headers=caller.headers
        )
        assert filtered.json()["items"] == []
        # Both documents have the same embedding: only the active one may come back.
        found = await client.post(
            f"{DOCUMENTS}/search", json={"embedding": unit(0), "k": 10}, headers=caller.headers
        )
        assert found.status_code == 200, found.text
        assert [hit["document"]["id"] for hit in found.json()["items"]] == [world.a.document["id"]]


async def test_only_an_admin_sees_soft_deleted_documents_with_include_deleted(
    client: httpx.AsyncClient, world: World
) -> None:
    deleted_id = world.a.deleted_document["id"]
    listed = await client.get(
        DOCUMENTS, params={"include_deleted": "true"}, headers=world.a.admin.headers
    )
    assert {item["id"] for item in listed.json()["items"]} == {world.a.document["id"], deleted_id}
    got = await client.get(
        f"{DOCUMENTS}/{deleted_id}",
        params={"include_deleted": "true"},
        headers=world.a.admin.headers,
    )
    assert got.status_code == 200
    assert got.json()["deleted_at"] is not None
    for url in (DOCUMENTS, f"{DOCUMENTS}/{deleted_id}"):
        refused = await client.get(
            url, params={"include_deleted": "true"}, headers=world.a.member.headers
        )
        assert refused.status_code == 403, refused.text
        assert deleted_id not in refused.text
