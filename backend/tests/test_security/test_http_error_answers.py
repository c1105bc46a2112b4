"""Errors over HTTP reach the client as generic JSON: database errors, NUL characters and
degenerate vectors are never a 500 with details, nor leak another tenant's data.

The JWT cases live in `tests/test_auth/test_bearer_tokens.py` (see docs/SECURITY.md).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import (
    DATABASE_TIMEOUT_MESSAGE,
    DATABASE_UNAVAILABLE_MESSAGE,
    INTERNAL_ERROR_MESSAGE,
)
from app.database.session import admin_transaction
from app.database.vector_search import EMBEDDING_DIMENSIONS
from app.models import Document, User
from app.schemas.document import DocumentCreate
from app.services import documents as documents_service
from app.services.actor import Actor
from tests.test_security.http_world import (
    DOCUMENTS,
    USERS,
    World,
    add_user,
    document_body,
    raw_get,
    without_request_id,
)

# Database errors reach the client as a generic JSON error ---------------------------------

_FORBIDDEN_TEXT = re.compile(
    r"(?i)select|insert|update|constraint|violat|detail|fk_|uq_|idx_|policy|row-level|"
    r"psycopg|sqlalchemy|traceback|invalid input syntax|uuid|canceling|tenant_id"
)

Fault = Callable[[AsyncSession, Actor, World], Awaitable[None]]


async def _unique(session: AsyncSession, context: Actor, world: World) -> None:
    email = world.a.member.user.email
    session.add(User(tenant_id=context.tenant_id, email=email, external_idp_id="dup"))
    await session.flush()


async def _foreign_key(session: AsyncSession, context: Actor, world: World) -> None:
    # A document of the caller's tenant pointing at the other tenant's user (composite FK).
    data = DocumentCreate.model_validate(document_body())
    foreign = Actor.user(
        tenant_id=context.own_tenant(), user_id=world.b.admin.user.id, role="admin"
    )
    await _ORIGINAL_CREATE(session, foreign, data)


_ORIGINAL_CREATE = documents_service.create_document


async def _row_level_security(session: AsyncSession, context: Actor, world: World) -> None:
    session.add(User(tenant_id=world.b.tenant_id, email="x@example.org"))
    await session.flush()


async def _cast(session: AsyncSession, context: Actor, world: World) -> None:
    await session.execute(text("SELECT CAST(:value AS uuid)"), {"value": "not-a-uuid"})


async def _timeout(session: AsyncSession, context: Actor, world: World) -> None:
    await session.execute(text("SET LOCAL statement_timeout = 50"))
    await session.execute(text("SELECT pg_sleep(2)"))


_FAULTS: dict[str, tuple[Fault, int]] = {
    "unique violation": (_unique, 500),
    "foreign key violation": (_foreign_key, 500),
    "row-level security violation": (_row_level_security, 500),
    "invalid cast": (_cast, 500),
    "statement timeout": (_timeout, 503),
}


@pytest.mark.parametrize("fault", sorted(_FAULTS))
async def test_database_errors_reach_the_client_as_a_generic_json_error(
    fault: str,
    client: httpx.AsyncClient,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    cause, status = _FAULTS[fault]

    async def failing_create(
        session: AsyncSession, context: Actor, data: DocumentCreate
    ) -> Document:
        await cause(session, context, world)
        raise AssertionError(f"{fault}: the database accepted it")

    monkeypatch.setattr(documents_service, "create_document", failing_create)
    response = await client.post(DOCUMENTS, json=document_body(), headers=world.a.admin.headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "request_id"}
    assert error["message"] in {
        INTERNAL_ERROR_MESSAGE,
        DATABASE_UNAVAILABLE_MESSAGE,
        DATABASE_TIMEOUT_MESSAGE,
    }
    assert not _FORBIDDEN_TEXT.search(response.text.replace(error["request_id"], "")), response.text
    for secret in (str(world.b.tenant_id), str(world.b.admin.user.id), world.a.member.user.email):
        assert secret not in response.text
    # Nothing of the failed request was stored.
    async with admin_transaction(admin_sessions) as session:
        users = (
            await session.scalars(select(User.email).where(User.tenant_id == world.a.tenant_id))
        ).all()
    assert sorted(users) == sorted([world.a.admin.user.email, world.a.member.user.email])


async def test_concurrent_duplicate_email_is_409_not_a_database_error(
    client: httpx.AsyncClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Skip the friendly pre-check, so the unique index itself must catch the clash.
    from app.services import users as users_service

    async def no_check(*_args: Any, **_kwargs: Any) -> None:
        return None

    monkeypatch.setattr(users_service, "_refuse_clash", no_check)
    response = await add_user(client, world.a.admin, world.a.member.user.email)
    assert response.status_code == 409, response.text
    assert not _FORBIDDEN_TEXT.search(without_request_id(response)["message"])


@pytest.mark.parametrize("depth", [1_000, 20_000])
async def test_pathologically_deep_metadata_is_422_not_a_crash(
    depth: int, client: httpx.AsyncClient, world: World
) -> None:
    raw = '{"a":' * depth + "1" + "}" * depth
    query = urlencode({"metadata": raw}).encode()
    status, listed = await raw_get(client, DOCUMENTS, query, world.a.admin.headers)
    assert status == 422, listed
    body = '{"embedding": [' + ",".join(["1"] * EMBEDDING_DIMENSIONS) + "]}"
    searched = await client.post(
        f"{DOCUMENTS}/search",
        content=body[:-1] + f', "filters": {{"metadata": {raw}}}}}',
        headers={**world.a.admin.headers, "Content-Type": "application/json"},
    )
    # The body parser refuses it (400 here; the edge's nesting limit makes it 422).
    assert searched.status_code in {400, 422}, searched.text


# Found by schemathesis: text PostgreSQL cannot store was a 500 -----------------------------


@pytest.mark.parametrize("field", ["filename", "content_type", "s3_bucket", "s3_key"])
async def test_nul_character_in_a_document_field_is_422(
    field: str, client: httpx.AsyncClient, world: World
) -> None:
    response = await client.post(
        DOCUMENTS, json=document_body(**{field: "a\x00b"}), headers=world.a.admin.headers
    )
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("url", "params"),
    [
        ("/api/v1/audit-logs", {"action": "a\x00b"}),
        ("/api/v1/audit-logs", {"resource_type": "\x00"}),
        (DOCUMENTS, {"content_type": "text/\x00plain"}),
    ],
)
async def test_nul_character_in_a_query_filter_is_422(
    url: str, params: dict[str, str], client: httpx.AsyncClient, world: World
) -> None:
    response = await client.get(url, params=params, headers=world.a.admin.headers)
    assert response.status_code == 422, response.text


async def test_nul_character_in_a_new_users_fields_is_422(
    client: httpx.AsyncClient, world: World
) -> None:
    for extra in ({"full_name": "Ada\x00"}, {"external_idp_id": "sub\x00"}):
        body = {"email": f"{uuid.uuid4().hex[:8]}@example.org", **extra}
        response = await client.post(USERS, json=body, headers=world.a.admin.headers)
        assert response.status_code == 422, response.text


async def test_embedding_too_small_for_float4_has_no_direction_and_is_422(
    client: httpx.AsyncClient, world: World
) -> None:
    # Non-zero for Python, zero once stored as float4: every distance would be NaN.
    tiny = "[" + ",".join(["1e-300"] * EMBEDDING_DIMENSIONS) + "]"
    headers = {**world.a.admin.headers, "Content-Type": "application/json"}
    response = await client.post(
        f"{DOCUMENTS}/search", content=f'{{"embedding": {tiny}}}', headers=headers
    )
    assert response.status_code == 422, response.text
    assert "embedding" in response.json()["error"]["message"]
