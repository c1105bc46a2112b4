"""One tenant's key never opens another tenant's content, and stored content that is not what
was uploaded is refused: with wrapped keys and objects swapped between tenants by a superuser
(database and bucket), or ciphertext tampered or truncated in the bucket, a download answers
`content_integrity_error` or stops short, and never returns a byte that was not uploaded."""

from __future__ import annotations

import os
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.envelope import HEADER_BYTES, SEALED_SEGMENT_BYTES
from app.content.object_store import S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.models import Document
from testkit.auth_helpers import AuthenticatedCaller
from testkit.factories import document_with_content, give_tenant_key
from tests.conftest import MakeCaller

API = "/api/v1"
CONTENT_A = os.urandom(300_000)  # five segments
CONTENT_B = os.urandom(300_000)


async def _keyed_document(
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    store: S3ObjectStore,
    keys: OpenBaoTransitKeyManager,
    data: bytes,
) -> tuple[AuthenticatedCaller, Document]:
    caller = await make_caller(role="admin")
    await give_tenant_key(admin_sessions, keys, caller.tenant.id)
    document = await document_with_content(runtime_sessions, caller.user, data, store, keys)
    return caller, document


@pytest.fixture
async def two(
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
) -> tuple[tuple[AuthenticatedCaller, Document], tuple[AuthenticatedCaller, Document]]:
    """Tenant A's and tenant B's document with content, each under its own tenant's key."""
    a = await _keyed_document(
        make_caller, admin_sessions, runtime_sessions, object_store, key_manager, CONTENT_A
    )
    b = await _keyed_document(
        make_caller, admin_sessions, runtime_sessions, object_store, key_manager, CONTENT_B
    )
    return a, b


async def _download(
    client: httpx.AsyncClient, caller: AuthenticatedCaller, document: Document
) -> tuple[int, bytes, Exception | None]:
    """Status, every byte received, and the error that cut the stream short (if one did)."""
    received = bytearray()
    status = 0
    try:
        async with client.stream(
            "GET", f"{API}/documents/{document.id}/content", headers=caller.headers
        ) as response:
            status = response.status_code
            async for chunk in response.aiter_raw():
                received += chunk
    except Exception as exc:  # the server ended the response abnormally
        return status, bytes(received), exc
    return status, bytes(received), None


def _assert_refused(result: tuple[int, bytes, Exception | None], uploaded: bytes) -> None:
    status, body, error = result
    if status == 500:
        assert b"content_integrity_error" in body
        assert uploaded[:32] not in body
        return
    # Refused mid-stream (the 200 was on its way): the response ends abnormally, after at
    # most a verified prefix of what was uploaded. (The in-process transport hands the client
    # the error instead of the partial body.)
    assert status in {0, 200}
    assert error is not None
    assert len(body) < len(uploaded)
    assert uploaded.startswith(body)


def _swap(superuser: psycopg.Connection[Any], a: Document, b: Document, *columns: str) -> None:
    assignments = ", ".join(f"{column} = other.{column}" for column in columns)
    superuser.execute(
        f"UPDATE documents d SET {assignments} FROM documents other"
        " WHERE (d.id, other.id) IN ((%(a)s, %(b)s), (%(b)s, %(a)s))",
        {"a": a.id, "b": b.id},
    )


async def _object(store: S3ObjectStore, document: Document) -> bytes:
    assert document.content_object_key is not None
    return b"".join([c async for c in await store.get_stream(document.content_object_key)])


async def _put(store: S3ObjectStore, document: Document, data: bytes) -> None:
    async def body() -> Any:
        yield data

    assert document.content_object_key is not None
    await store.put_stream(document.content_object_key, body(), content_type="x/y")


async def test_swapped_wrapped_keys_do_not_open(
    content_client: httpx.AsyncClient, superuser: psycopg.Connection[Any], two: Any
) -> None:
    (caller_a, doc_a), (caller_b, doc_b) = two
    _swap(superuser, doc_a, doc_b, "content_wrapped_key")
    _assert_refused(await _download(content_client, caller_a, doc_a), CONTENT_A)
    _assert_refused(await _download(content_client, caller_b, doc_b), CONTENT_B)
    # Even with the other tenant's key reference beside its wrapped key.
    _swap(superuser, doc_a, doc_b, "content_key_ref")
    _assert_refused(await _download(content_client, caller_a, doc_a), CONTENT_A)


async def test_swapped_objects_do_not_open(
    content_client: httpx.AsyncClient, object_store: S3ObjectStore, two: Any
) -> None:
    (caller_a, doc_a), (caller_b, doc_b) = two
    sealed_a, sealed_b = await _object(object_store, doc_a), await _object(object_store, doc_b)
    await _put(object_store, doc_a, sealed_b)
    await _put(object_store, doc_b, sealed_a)
    result_a = await _download(content_client, caller_a, doc_a)
    _assert_refused(result_a, CONTENT_A)
    assert CONTENT_B[:32] not in result_a[1]
    _assert_refused(await _download(content_client, caller_b, doc_b), CONTENT_B)


async def test_a_row_pointed_at_the_other_tenants_object_and_key_does_not_open(
    content_client: httpx.AsyncClient, superuser: psycopg.Connection[Any], two: Any
) -> None:
    (caller_a, doc_a), (_, doc_b) = two
    # Everything B's row needs to read B's content, moved into A's row: A's context (tenant A,
    # document A) is bound into the wrapped key and the segment keys, so it still fails.
    superuser.execute(
        "UPDATE documents SET content_object_key = %s, content_wrapped_key = %s,"
        " content_key_ref = %s WHERE id = %s",
        (doc_b.content_object_key, doc_b.content_wrapped_key, doc_b.content_key_ref, doc_a.id),
    )
    status, body, _ = await _download(content_client, caller_a, doc_a)
    assert status == 500
    assert b"content_integrity_error" in body
    assert CONTENT_B[:32] not in body


@pytest.mark.parametrize(
    ("where", "how"),
    [
        ("header", "flip"),
        ("first segment", "flip"),
        ("fourth segment", "flip"),
        ("last segment", "flip"),
        ("end", "truncate a segment"),
        ("end", "drop the last segment"),
        ("middle", "swap two segments"),
    ],
)
async def test_tampered_ciphertext_never_gives_wrong_bytes(
    content_client: httpx.AsyncClient,
    object_store: S3ObjectStore,
    two: Any,
    where: str,
    how: str,
) -> None:
    (caller_a, doc_a), _ = two
    sealed = bytearray(await _object(object_store, doc_a))
    offsets = {
        "header": 10,
        "first segment": HEADER_BYTES + 100,
        "fourth segment": HEADER_BYTES + 3 * SEALED_SEGMENT_BYTES + 5,
        "last segment": len(sealed) - 3,
    }
    if how == "flip":
        sealed[offsets[where]] ^= 0x01
    elif how == "truncate a segment":
        del sealed[-100:]
    elif how == "drop the last segment":
        del sealed[HEADER_BYTES + 4 * SEALED_SEGMENT_BYTES :]
    else:
        first = slice(HEADER_BYTES + SEALED_SEGMENT_BYTES, HEADER_BYTES + 2 * SEALED_SEGMENT_BYTES)
        second = slice(
            HEADER_BYTES + 2 * SEALED_SEGMENT_BYTES, HEADER_BYTES + 3 * SEALED_SEGMENT_BYTES
        )
        sealed[first], sealed[second] = sealed[second], sealed[first]
    await _put(object_store, doc_a, bytes(sealed))
    _assert_refused(await _download(content_client, caller_a, doc_a), CONTENT_A)
