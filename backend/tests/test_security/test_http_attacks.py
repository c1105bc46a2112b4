"""HTTP-level attacks: two tenants with an admin and a member each; every hostile request gets
the safe answer, and the victim's rows are unchanged afterwards.

The JWT cases live in `tests/test_auth/test_bearer_tokens.py` (see docs/SECURITY.md); this file
covers ids, soft deletes, mass assignment, cursors, filters, embeddings, emails and errors.
"""

from __future__ import annotations

import base64
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.context import RequestContext
from app.core.errors import (
    DATABASE_TIMEOUT_MESSAGE,
    DATABASE_UNAVAILABLE_MESSAGE,
    INTERNAL_ERROR_MESSAGE,
)
from app.database.session import admin_transaction
from app.models import Document, User
from app.models.document import EMBEDDING_DIMENSIONS
from app.schemas.document import DocumentCreate
from app.services import documents as documents_service
from tests.auth_helpers import AuthenticatedCaller
from tests.conftest import MakeCaller

DOCUMENTS = "/api/v1/documents"
USERS = "/api/v1/users"


@dataclass(frozen=True)
class Side:
    """One tenant: its admin, its member, and a document the admin registered over the API."""

    admin: AuthenticatedCaller
    member: AuthenticatedCaller
    document: dict[str, Any]
    deleted_document: dict[str, Any]

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.admin.tenant.id


@dataclass(frozen=True)
class World:
    """The attacker's tenant `a` and the victim's tenant `b`."""

    a: Side
    b: Side


def _document_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "filename": f"{uuid.uuid4().hex[:8]}.pdf",
        "content_type": "application/pdf",
        "size_bytes": 1234,
        "s3_bucket": "bucket",
        "s3_key": f"keys/{uuid.uuid4().hex}.pdf",
        "metadata": {"department": "cardiology"},
    }
    body.update(overrides)
    return body


def _unit(index: int) -> list[float]:
    vector = [0.0] * EMBEDDING_DIMENSIONS
    vector[index] = 1.0
    return vector


async def _create(client: httpx.AsyncClient, caller: AuthenticatedCaller, **fields: Any) -> Any:
    response = await client.post(DOCUMENTS, json=_document_body(**fields), headers=caller.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def _side(client: httpx.AsyncClient, make_caller: MakeCaller, label: str) -> Side:
    admin = await make_caller(role="admin", tenant_name=f"{label}-{uuid.uuid4().hex[:6]}")
    member = await make_caller(role="member", tenant=admin.tenant)
    document = await _create(client, admin, embedding=_unit(0))
    deleted = await _create(client, admin, embedding=_unit(0), metadata={"department": "gone"})
    response = await client.delete(f"{DOCUMENTS}/{deleted['id']}", headers=admin.headers)
    assert response.status_code == 204, response.text
    return Side(admin, member, document, deleted)


@pytest.fixture
async def world(client: httpx.AsyncClient, make_caller: MakeCaller) -> World:
    """Two tenants, each with an admin, a member, an active and a soft-deleted document."""
    return World(await _side(client, make_caller, "a"), await _side(client, make_caller, "b"))


def _without_request_id(response: httpx.Response) -> dict[str, Any]:
    error = dict(response.json()["error"])
    error.pop("request_id", None)
    return error


async def _stored_document(
    admin_sessions: async_sessionmaker[AsyncSession], document_id: str
) -> tuple[Any, ...]:
    """What is really stored for a document (read as the provisioning role)."""
    async with admin_transaction(admin_sessions) as session:
        row = (
            await session.execute(
                select(
                    Document.status, Document.metadata_, Document.deleted_at, Document.updated_at
                ).where(Document.id == uuid.UUID(document_id))
            )
        ).one()
    return tuple(row)


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
    before = {victim: await _stored_document(admin_sessions, victim) for victim in victims}
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
            assert _without_request_id(attack) == _without_request_id(control)
            assert victim not in attack.text
    for victim in victims:
        assert await _stored_document(admin_sessions, victim) == before[victim]


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
        assert _without_request_id(attack) == _without_request_id(control)
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
            f"{DOCUMENTS}/search", json={"embedding": _unit(0), "k": 10}, headers=caller.headers
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
        DOCUMENTS, json=_document_body(**{field: value}), headers=world.a.admin.headers
    )
    assert created.status_code == 422, created.text
    assert field in created.json()["error"]["message"]
    target = world.a.document["id"]
    before = await _stored_document(admin_sessions, target)
    updated = await client.patch(
        f"{DOCUMENTS}/{target}",
        json={"status": "failed", field: value},
        headers=world.a.admin.headers,
    )
    assert updated.status_code == 422, updated.text
    assert field in updated.json()["error"]["message"]
    assert await _stored_document(admin_sessions, target) == before


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
        DOCUMENTS, json=_document_body(**body), headers=world.a.admin.headers
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


# Pagination cursors -----------------------------------------------------------------------


async def _first_cursor(client: httpx.AsyncClient, side: Side, url: str = DOCUMENTS) -> str:
    await _create(client, side.admin)
    page = await client.get(url, params={"limit": 1}, headers=side.admin.headers)
    cursor = page.json()["next_cursor"]
    assert cursor, page.text
    return str(cursor)


def _flip(cursor: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[5] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


async def test_cursor_from_another_tenant_is_422(client: httpx.AsyncClient, world: World) -> None:
    for url in (DOCUMENTS, USERS, "/api/v1/audit-logs"):
        foreign = await _first_cursor(client, world.b, url)
        response = await client.get(
            url, params={"cursor": foreign, "limit": 1}, headers=world.a.admin.headers
        )
        assert response.status_code == 422, (url, response.text)
        assert "cursor" in response.json()["error"]["message"]


async def test_tampered_garbage_and_other_query_cursors_are_422(
    client: httpx.AsyncClient, world: World
) -> None:
    own = await _first_cursor(client, world.a)
    payload = base64.urlsafe_b64decode(own + "=" * (-len(own) % 4))[:-16]
    forged_payload = payload.replace(
        str(world.a.tenant_id).encode(), str(world.b.tenant_id).encode()
    )
    unsigned = base64.urlsafe_b64encode(forged_payload + b"\0" * 16).decode().rstrip("=")
    cursors = {
        "tampered": _flip(own),
        "re-signed with a guess": unsigned,
        "garbage base64": "!!!not-base64!!!",
        "valid base64, not a cursor": base64.urlsafe_b64encode(b"hello").decode(),
        "empty json": base64.urlsafe_b64encode(b"[]" + b"\0" * 16).decode(),
        "too long": "A" * 600,
    }
    for name, cursor in cursors.items():
        response = await client.get(
            DOCUMENTS, params={"cursor": cursor, "limit": 1}, headers=world.a.admin.headers
        )
        assert response.status_code == 422, (name, response.text)
    # A cursor is bound to its query: the same cursor with another filter is refused.
    other_query = await client.get(
        DOCUMENTS,
        params={"cursor": own, "limit": 1, "status": "processing"},
        headers=world.a.admin.headers,
    )
    assert other_query.status_code == 422, other_query.text


@pytest.mark.parametrize("limit", ["0", "-1", "201", "1000000000000", "abc", "1.5"])
async def test_page_size_out_of_range_is_422(
    limit: str, client: httpx.AsyncClient, world: World
) -> None:
    for url in (DOCUMENTS, USERS, "/api/v1/audit-logs"):
        response = await client.get(url, params={"limit": limit}, headers=world.a.admin.headers)
        assert response.status_code == 422, (url, response.text)
        assert "limit" in response.json()["error"]["message"]


# Metadata filters -------------------------------------------------------------------------

_HOSTILE_METADATA = {
    "x' OR '1'='1": "'; DROP TABLE documents; --",
    '$.** ? (@ like_regex ".*")': "$[*]",
    'a"b': {"@>": "{}"},
}


async def test_hostile_metadata_filter_is_one_literal_jsonb_parameter(
    client: httpx.AsyncClient, world: World
) -> None:
    literal = await _create(client, world.a.admin, metadata=_HOSTILE_METADATA)
    for key, value in _HOSTILE_METADATA.items():
        response = await client.get(
            DOCUMENTS,
            params={"metadata": json.dumps({key: value})},
            headers=world.a.admin.headers,
        )
        assert response.status_code == 200, response.text
        # Only the document holding exactly that text matches: no injected predicate ran.
        assert [item["id"] for item in response.json()["items"]] == [literal["id"]]
    response = await client.get(
        DOCUMENTS,
        params={"metadata": json.dumps({"x' OR '1'='1": "anything"})},
        headers=world.a.admin.headers,
    )
    assert response.json()["items"] == []
    searched = await client.post(
        f"{DOCUMENTS}/search",
        json={"embedding": _unit(0), "filters": {"metadata": {"$.**": "'; --"}}},
        headers=world.a.admin.headers,
    )
    assert searched.status_code == 200, searched.text
    assert searched.json()["items"] == []


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


async def _raw_get(
    client: httpx.AsyncClient, path: str, query: bytes, headers: dict[str, str]
) -> tuple[int, str]:
    """GET through the ASGI app directly: httpx refuses URLs over 64 KiB, attackers don't."""
    app = client._transport.app  # type: ignore[attr-defined]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body.decode()


@pytest.mark.parametrize(
    ("name", "metadata"),
    [
        ("huge array", {"ids": list(range(20_000))}),
        ("deep nesting", _nested(11)),
        ("NUL character", {"a": "\x00"}),
    ],
)
async def test_oversized_or_deep_metadata_filter_is_422(
    name: str, metadata: dict[str, Any], client: httpx.AsyncClient, world: World
) -> None:
    query = urlencode({"metadata": json.dumps(metadata)}).encode()
    status, listed = await _raw_get(client, DOCUMENTS, query, world.a.admin.headers)
    assert status == 422, (name, listed)
    searched = await client.post(
        f"{DOCUMENTS}/search",
        json={"embedding": _unit(0), "filters": {"metadata": metadata}},
        headers=world.a.admin.headers,
    )
    assert searched.status_code == 422, (name, searched.text)
    created = await client.post(
        DOCUMENTS, json=_document_body(metadata=metadata), headers=world.a.admin.headers
    )
    assert created.status_code == 422, (name, created.text)


@pytest.mark.parametrize("raw", ["[1,2]", '"text"', "{not json", "null", "1"])
async def test_metadata_filter_that_is_not_a_json_object_is_422(
    raw: str, client: httpx.AsyncClient, world: World
) -> None:
    response = await client.get(DOCUMENTS, params={"metadata": raw}, headers=world.a.admin.headers)
    assert response.status_code == 422, response.text
    assert "metadata" in response.json()["error"]["message"]


# Embeddings and k -------------------------------------------------------------------------

_ONES = ",".join(["1"] * (EMBEDDING_DIMENSIONS - 1))
_BAD_EMBEDDINGS = {
    "NaN": f"[NaN,{_ONES}]",
    "Infinity": f"[Infinity,{_ONES}]",
    "-Infinity": f"[-Infinity,{_ONES}]",
    "huge exponent": f"[1e999,{_ONES}]",
    "a string": f'["1",{_ONES}]',
    "a boolean": f"[true,{_ONES}]",
    "null element": f"[null,{_ONES}]",
    "1023 numbers": f"[{_ONES}]",
    "1025 numbers": f"[1,1,{_ONES}]",
    "an object": '{"0": 1}',
    "empty": "[]",
    # Finite for Python, but not for pgvector's float4 (a database error before the fix).
    "beyond float32": f"[1e39,{_ONES}]",
    # Cosine distance is undefined for these (NaN distances before the fix).
    "all zeros": "[" + ",".join(["0"] * EMBEDDING_DIMENSIONS) + "]",
    "overflowing float4 sums": "[" + ",".join(["1e30"] * EMBEDDING_DIMENSIONS) + "]",
}


@pytest.mark.parametrize("case", sorted(_BAD_EMBEDDINGS))
async def test_bad_embedding_is_422_on_search_create_and_update(
    case: str, client: httpx.AsyncClient, world: World
) -> None:
    embedding = _BAD_EMBEDDINGS[case]
    headers = {**world.a.admin.headers, "Content-Type": "application/json"}
    create_body = json.dumps(_document_body())[:-1] + f', "embedding": {embedding}}}'
    requests = [
        ("POST", f"{DOCUMENTS}/search", f'{{"embedding": {embedding}, "k": 5}}'),
        ("POST", DOCUMENTS, create_body),
        ("PATCH", f"{DOCUMENTS}/{world.a.document['id']}", f'{{"embedding": {embedding}}}'),
    ]
    for method, url, body in requests:
        response = await client.request(method, url, content=body, headers=headers)
        assert response.status_code == 422, (method, url, response.text)
        assert "embedding" in response.json()["error"]["message"]


@pytest.mark.parametrize("k", [0, -1, 101, "5", 5.5, None, True])
async def test_k_out_of_range_or_not_an_integer_is_422(
    k: Any, client: httpx.AsyncClient, world: World
) -> None:
    response = await client.post(
        f"{DOCUMENTS}/search", json={"embedding": _unit(1), "k": k}, headers=world.a.admin.headers
    )
    assert response.status_code == 422, response.text
    assert "k" in response.json()["error"]["message"]


async def test_k_bounds_are_accepted(client: httpx.AsyncClient, world: World) -> None:
    for k in (1, 100):
        response = await client.post(
            f"{DOCUMENTS}/search",
            json={"embedding": _unit(1), "k": k},
            headers=world.a.admin.headers,
        )
        assert response.status_code == 200, response.text
        assert math.isfinite(response.json()["items"][0]["distance"])


# Emails are unique per tenant, by their normalised form -----------------------------------


async def _add_user(
    client: httpx.AsyncClient, admin: AuthenticatedCaller, email: str
) -> httpx.Response:
    return await client.post(USERS, json={"email": email}, headers=admin.headers)


async def test_email_existing_only_in_another_tenant_is_201(
    client: httpx.AsyncClient, world: World
) -> None:
    email = f"shared-{uuid.uuid4().hex[:6]}@example.org"
    assert (await _add_user(client, world.b.admin, email)).status_code == 201
    response = await _add_user(client, world.a.admin, email)
    assert response.status_code == 201, response.text
    assert response.json()["tenant_id"] == str(world.a.tenant_id)


@pytest.mark.parametrize(
    "variant",
    [
        lambda local: f"{local.upper()}@EXAMPLE.ORG",
        lambda local: f"  {local}@example.org ",
        # Fullwidth letters: NFKC folds them to ASCII.
        lambda local: (
            f"{local[0].translate({ord(c): ord(c) + 0xFEE0 for c in 'abcdef'})}"
            f"{local[1:]}@example.org"
        ),
    ],
    ids=["other case", "surrounding spaces", "fullwidth (NFKC)"],
)
async def test_same_email_in_another_case_or_unicode_form_is_409(
    variant: Callable[[str], str], client: httpx.AsyncClient, world: World
) -> None:
    local = "a" + uuid.uuid4().hex[:6]
    first = await _add_user(client, world.a.admin, f"{local}@example.org")
    assert first.status_code == 201, first.text
    again = await _add_user(client, world.a.admin, variant(local))
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "conflict"


# Database errors reach the client as a generic JSON error ---------------------------------

_FORBIDDEN_TEXT = re.compile(
    r"(?i)select|insert|update|constraint|violat|detail|fk_|uq_|idx_|policy|row-level|"
    r"psycopg|sqlalchemy|traceback|invalid input syntax|uuid|canceling|tenant_id"
)

Fault = Callable[[AsyncSession, RequestContext, World], Awaitable[None]]


async def _unique(session: AsyncSession, context: RequestContext, world: World) -> None:
    email = world.a.member.user.email
    session.add(User(tenant_id=context.tenant_id, email=email, external_idp_id="dup"))
    await session.flush()


async def _foreign_key(session: AsyncSession, context: RequestContext, world: World) -> None:
    # A document of the caller's tenant pointing at the other tenant's user (composite FK).
    data = DocumentCreate.model_validate(_document_body())
    foreign = RequestContext(
        tenant_id=context.tenant_id,
        user_id=world.b.admin.user.id,
        user_role="admin",
        request_id=None,
        client_ip=None,
        user_agent=None,
    )
    await _ORIGINAL_CREATE(session, foreign, data)


_ORIGINAL_CREATE = documents_service.create_document


async def _row_level_security(session: AsyncSession, context: RequestContext, world: World) -> None:
    session.add(User(tenant_id=world.b.tenant_id, email="x@example.org"))
    await session.flush()


async def _cast(session: AsyncSession, context: RequestContext, world: World) -> None:
    await session.execute(text("SELECT CAST(:value AS uuid)"), {"value": "not-a-uuid"})


async def _timeout(session: AsyncSession, context: RequestContext, world: World) -> None:
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
        session: AsyncSession, context: RequestContext, data: DocumentCreate
    ) -> Document:
        await cause(session, context, world)
        raise AssertionError(f"{fault}: the database accepted it")

    monkeypatch.setattr(documents_service, "create_document", failing_create)
    response = await client.post(DOCUMENTS, json=_document_body(), headers=world.a.admin.headers)
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
    response = await _add_user(client, world.a.admin, world.a.member.user.email)
    assert response.status_code == 409, response.text
    assert not _FORBIDDEN_TEXT.search(_without_request_id(response)["message"])


@pytest.mark.parametrize("depth", [1_000, 20_000])
async def test_pathologically_deep_metadata_is_422_not_a_crash(
    depth: int, client: httpx.AsyncClient, world: World
) -> None:
    raw = '{"a":' * depth + "1" + "}" * depth
    query = urlencode({"metadata": raw}).encode()
    status, listed = await _raw_get(client, DOCUMENTS, query, world.a.admin.headers)
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
        DOCUMENTS, json=_document_body(**{field: "a\x00b"}), headers=world.a.admin.headers
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
