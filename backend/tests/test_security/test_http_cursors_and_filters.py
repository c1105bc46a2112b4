"""Cursors and metadata filters over HTTP: foreign, tampered or garbage cursors and hostile,
oversized or deep filters are 422, and a filter is one bound JSONB parameter.

The JWT cases live in `tests/test_auth/test_bearer_tokens.py` (see docs/SECURITY.md).
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.test_security.http_world import (
    DOCUMENTS,
    USERS,
    Side,
    World,
    create_document,
    document_body,
    raw_get,
    unit,
)

# Pagination cursors -----------------------------------------------------------------------


async def _first_cursor(client: httpx.AsyncClient, side: Side, url: str = DOCUMENTS) -> str:
    await create_document(client, side.admin)
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
    literal = await create_document(client, world.a.admin, metadata=_HOSTILE_METADATA)
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
        json={"embedding": unit(0), "filters": {"metadata": {"$.**": "'; --"}}},
        headers=world.a.admin.headers,
    )
    assert searched.status_code == 200, searched.text
    assert searched.json()["items"] == []


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


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
    status, listed = await raw_get(client, DOCUMENTS, query, world.a.admin.headers)
    assert status == 422, (name, listed)
    searched = await client.post(
        f"{DOCUMENTS}/search",
        json={"embedding": unit(0), "filters": {"metadata": metadata}},
        headers=world.a.admin.headers,
    )
    assert searched.status_code == 422, (name, searched.text)
    created = await client.post(
        DOCUMENTS, json=document_body(metadata=metadata), headers=world.a.admin.headers
    )
    assert created.status_code == 422, (name, created.text)


@pytest.mark.parametrize("raw", ["[1,2]", '"text"', "{not json", "null", "1"])
async def test_metadata_filter_that_is_not_a_json_object_is_422(
    raw: str, client: httpx.AsyncClient, world: World
) -> None:
    response = await client.get(DOCUMENTS, params={"metadata": raw}, headers=world.a.admin.headers)
    assert response.status_code == 422, response.text
    assert "metadata" in response.json()["error"]["message"]
