"""Bad input at the edge: 413/415/422/431 answered before parsing, and never a database call."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from app.core.config import Settings
from app.middleware.edge_limits import (
    MAX_HEADER_BYTES,
    MAX_TOTAL_HEADER_BYTES,
    EdgeLimits,
    nesting_problem,
)
from tests.conftest import MakeCaller
from tests.test_middleware.conftest import DatabaseUse, assert_error

DOCUMENTS = "/api/v1/documents"
SEARCH = "/api/v1/documents/search"
ME = "/api/v1/me"


def _embedding() -> list[float]:
    rng = random.Random(7)
    return [rng.uniform(-1, 1) for _ in range(1024)]


def _create_body(**overrides: Any) -> dict[str, Any]:
    return {
        "filename": "scan.pdf",
        "content_type": "application/pdf",
        "size_bytes": 10,
        "s3_bucket": "bucket",
        "s3_key": f"edge/{random.random()}.pdf",
        **overrides,
    }


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


async def test_create_with_full_embedding_and_large_metadata_fits_the_default_limit(
    client: httpx.AsyncClient, make_caller: MakeCaller, settings: Settings
) -> None:
    """The default limit leaves room: a 1024-dim embedding plus ~60 KiB of metadata is 201."""
    caller = await make_caller()
    body = _create_body(embedding=_embedding(), metadata={"notes": "x" * 60_000})
    size = len(json.dumps(body).encode())
    assert 80_000 < size < settings.MAX_REQUEST_BODY_BYTES // 8
    response = await client.post(DOCUMENTS, json=body, headers=caller.headers)
    assert response.status_code == 201, response.text
    search = await client.post(SEARCH, json={"embedding": _embedding()}, headers=caller.headers)
    assert search.status_code == 200, search.text
    assert search.json()["items"][0]["document"]["id"] == response.json()["id"]


async def test_body_over_the_limit_by_content_length_is_413_without_database(
    client: httpx.AsyncClient,
    make_caller: MakeCaller,
    settings: Settings,
    database_use: DatabaseUse,
) -> None:
    caller = await make_caller()
    padding = "x" * settings.MAX_REQUEST_BODY_BYTES
    before = database_use.snapshot()
    response = await client.post(
        DOCUMENTS, json=_create_body(metadata={"padding": padding}), headers=caller.headers
    )
    error = assert_error(response, 413, "payload_too_large")
    assert str(settings.MAX_REQUEST_BODY_BYTES) in error["message"]
    assert database_use.snapshot() == before


async def test_chunked_body_over_the_limit_is_413_and_reading_stops_at_the_limit(
    client: httpx.AsyncClient,
    make_caller: MakeCaller,
    settings: Settings,
    database_use: DatabaseUse,
) -> None:
    """No Content-Length (chunked): bytes are counted as they stream, and reading stops."""
    caller = await make_caller()
    chunk = b" " * 65_536
    total_chunks = 4 * settings.MAX_REQUEST_BODY_BYTES // len(chunk)
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(total_chunks):
            sent += 1
            yield chunk

    before = database_use.snapshot()
    response = await client.post(
        SEARCH,
        content=stream(),
        headers={**caller.headers, "content-type": "application/json"},
    )
    assert_error(response, 413, "payload_too_large")
    assert sent <= settings.MAX_REQUEST_BODY_BYTES // len(chunk) + 1 < total_chunks
    assert database_use.snapshot() == before


async def test_oversized_content_length_is_refused_before_the_body_is_read() -> None:
    """The declared length alone decides: `receive` is never called."""
    reached_app = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal reached_app
        reached_app = True

    async def receive() -> Message:
        raise AssertionError("the body was read")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    edge = EdgeLimits(app, max_body_bytes=1000, max_json_depth=32)
    scope = {
        "type": "http",
        "method": "POST",
        "path": SEARCH,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1001")],
        "state": {},
    }
    await edge(scope, receive, send)
    assert sent[0]["status"] == 413
    assert not reached_app


@pytest.mark.parametrize("content_length", [b"12abc", b"-5", b"99999999999999999999999"])
async def test_malformed_content_length_is_400(content_length: bytes) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("reached the app")

    async def receive() -> Message:
        raise AssertionError("the body was read")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": SEARCH,
        "headers": [(b"content-type", b"application/json"), (b"content-length", content_length)],
        "state": {},
    }
    await EdgeLimits(app, max_body_bytes=1000, max_json_depth=32)(scope, receive, send)
    assert sent[0]["status"] == 400
    assert b"Content-Length" in sent[1]["body"]


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
async def test_json_nested_deeper_than_the_limit_is_422_without_database(
    client: httpx.AsyncClient,
    make_caller: MakeCaller,
    settings: Settings,
    database_use: DatabaseUse,
    depth: int,
) -> None:
    """Past Python's recursion limit too: the nesting is measured without parsing."""
    caller = await make_caller()
    body = '{"k":' * depth + "1" + "}" * depth
    before = database_use.snapshot()
    response = await client.post(
        SEARCH,
        content=body,
        headers={**caller.headers, "content-type": "application/json"},
    )
    error = assert_error(response, 422, "validation_error")
    assert f"nested more than {settings.MAX_JSON_DEPTH} levels" in error["message"]
    assert database_use.snapshot() == before


async def test_json_at_the_depth_limit_passes_the_edge_and_meets_the_schema(
    client: httpx.AsyncClient, make_caller: MakeCaller, settings: Settings
) -> None:
    """Exactly MAX_JSON_DEPTH levels is let through; the metadata schema then refuses it."""
    caller = await make_caller()
    body = _create_body(metadata=_nested(settings.MAX_JSON_DEPTH - 1))
    response = await client.post(DOCUMENTS, json=body, headers=caller.headers)
    error = assert_error(response, 422, "validation_error")
    assert "metadata: nested deeper than 10 levels" in error["message"]


async def test_deep_unbalanced_brackets_are_422_never_a_recursion_error(
    client: httpx.AsyncClient, make_caller: MakeCaller
) -> None:
    caller = await make_caller()
    for body in ("[" * 100_000, "{" * 50 + "]" * 50, '{"a": [}'):
        response = await client.post(
            SEARCH, content=body, headers={**caller.headers, "content-type": "application/json"}
        )
        assert response.status_code == 422, (body[:20], response.text)


def test_nesting_ignores_brackets_inside_strings_and_counts_both_kinds() -> None:
    deep_text = json.dumps({"text": "[" * 500 + '\\"{' * 100, "list": [[["a]"]]]})
    assert nesting_problem(deep_text.encode(), 4) is None
    assert nesting_problem(json.dumps(_nested(4)).encode(), 4) is None
    assert nesting_problem(json.dumps([{"a": [{"b": [1]}]}]).encode(), 4) is not None
    assert nesting_problem(json.dumps([[]] * 10_000).encode(), 2) is None
    assert nesting_problem(json.dumps([[[]]] * 10_000).encode(), 2) is not None


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json; charset=utf-16",
        None,
    ],
)
async def test_non_json_content_type_is_415_without_database(
    client: httpx.AsyncClient,
    make_caller: MakeCaller,
    database_use: DatabaseUse,
    content_type: str | None,
) -> None:
    caller = await make_caller()
    headers = dict(caller.headers)
    if content_type is not None:
        headers["content-type"] = content_type
    before = database_use.snapshot()
    response = await client.post(
        DOCUMENTS, content=json.dumps(_create_body()).encode(), headers=headers
    )
    error = assert_error(response, 415, "unsupported_media_type")
    assert "JSON" in error["message"]
    assert database_use.snapshot() == before


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=UTF-8", "Application/JSON", "application/vnd+json"]
)
async def test_json_content_types_are_accepted(
    client: httpx.AsyncClient, make_caller: MakeCaller, content_type: str
) -> None:
    caller = await make_caller()
    response = await client.post(
        DOCUMENTS,
        content=json.dumps(_create_body()).encode(),
        headers={**caller.headers, "content-type": content_type},
    )
    assert response.status_code == 201, response.text


async def test_requests_without_a_body_need_no_content_type(
    client: httpx.AsyncClient, make_caller: MakeCaller
) -> None:
    caller = await make_caller(role="admin")  # restoring is for admins
    assert (await client.get(ME, headers=caller.headers)).status_code == 200
    created = await client.post(DOCUMENTS, json=_create_body(), headers=caller.headers)
    document_url = f"{DOCUMENTS}/{created.json()['id']}"
    assert (await client.delete(document_url, headers=caller.headers)).status_code == 204
    restored = await client.post(f"{document_url}/restore", headers=caller.headers)
    assert restored.status_code == 200, restored.text


async def test_oversized_header_is_431_without_database(
    client: httpx.AsyncClient, make_caller: MakeCaller, database_use: DatabaseUse
) -> None:
    caller = await make_caller()
    before = database_use.snapshot()
    one_big = {**caller.headers, "x-filler": "a" * MAX_HEADER_BYTES}
    error = assert_error(await client.get(ME, headers=one_big), 431, "header_too_large")
    assert "x-filler" in error["message"]
    many = {f"x-filler-{n}": "a" * 4000 for n in range(MAX_TOTAL_HEADER_BYTES // 4000 + 1)}
    error = assert_error(
        await client.get(ME, headers={**caller.headers, **many}), 431, "header_too_large"
    )
    assert str(MAX_TOTAL_HEADER_BYTES) in error["message"]
    assert database_use.snapshot() == before


async def test_oversized_token_is_431_and_a_large_garbage_token_401_without_database(
    client: httpx.AsyncClient, database_use: DatabaseUse
) -> None:
    """The Authorization guard (app.middleware.tenant_context) answers both before parsing."""
    before = database_use.snapshot()
    huge = await client.get(ME, headers={"authorization": "Bearer " + "a" * MAX_HEADER_BYTES})
    assert_error(huge, 431, "header_too_large")
    large = await client.get(ME, headers={"authorization": "Bearer " + "a.b." + "c" * 7000})
    assert_error(large, 401, "unauthorized")
    assert database_use.snapshot() == before
