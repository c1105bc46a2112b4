"""Mass assignment and bad fields over HTTP: server-owned fields and malformed values are 422.

The JWT cases live in `tests/test_auth/test_bearer_tokens.py` (see docs/SECURITY.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.test_security.http_world import DOCUMENTS, USERS, World, document_body, stored_document

# Mass assignment --------------------------------------------------------------------------

_MASS_ASSIGNED: dict[str, Callable[[World], Any]] = {
    "id": lambda world: str(uuid.uuid4()),
    "tenant_id": lambda world: str(world.b.tenant_id),
    "user_id": lambda world: str(world.b.admin.user.id),
    "deleted_at": lambda world: "2020-01-01T00:00:00Z",
    "created_at": lambda world: "2020-01-01T00:00:00Z",
    "updated_at": lambda world: "2020-01-01T00:00:00Z",
    "has_embedding": lambda world: True,
}


@pytest.mark.parametrize("field", sorted(_MASS_ASSIGNED))
async def test_mass_assigned_server_fields_are_422_on_create_and_update(
    field: str,
    client: httpx.AsyncClient,
    world: World,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    value = _MASS_ASSIGNED[field](world)
    created = await client.post(
        DOCUMENTS, json=document_body(**{field: value}), headers=world.a.admin.headers
    )
    assert created.status_code == 422, created.text
    assert field in created.json()["error"]["message"]
    target = world.a.document["id"]
    before = await stored_document(admin_sessions, target)
    updated = await client.patch(
        f"{DOCUMENTS}/{target}",
        json={"status": "failed", field: value},
        headers=world.a.admin.headers,
    )
    assert updated.status_code == 422, updated.text
    assert field in updated.json()["error"]["message"]
    assert await stored_document(admin_sessions, target) == before


@pytest.mark.parametrize(
    "body",
    [
        {"status": "completed"},  # status is the server's on create
        {"status": "hacked"},
        {"size_bytes": -1},
        {"size_bytes": 2**63},
        {"size_bytes": "12"},
        {"filename": ""},
        {"metadata": ["not", "an", "object"]},
    ],
)
async def test_bad_create_fields_are_422_never_500(
    body: dict[str, Any], client: httpx.AsyncClient, world: World
) -> None:
    response = await client.post(
        DOCUMENTS, json=document_body(**body), headers=world.a.admin.headers
    )
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "body",
    [{"status": "hacked"}, {"status": None}, {"status": 1}, {"metadata": None}, {}],
)
async def test_bad_update_fields_are_422_never_500(
    body: dict[str, Any], client: httpx.AsyncClient, world: World
) -> None:
    response = await client.patch(
        f"{DOCUMENTS}/{world.a.document['id']}", json=body, headers=world.a.admin.headers
    )
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "extra",
    [{"id": "x"}, {"tenant_id": "x"}, {"deleted_at": "2020-01-01"}, {"role": "owner"}],
)
async def test_mass_assigned_user_fields_are_422(
    extra: dict[str, Any], client: httpx.AsyncClient, world: World
) -> None:
    body = {"email": f"{uuid.uuid4().hex[:8]}@example.org", **extra}
    if "tenant_id" in extra:
        body["tenant_id"] = str(world.b.tenant_id)
    response = await client.post(USERS, json=body, headers=world.a.admin.headers)
    assert response.status_code == 422, response.text
