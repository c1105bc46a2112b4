"""Streamed envelope encryption: round trips, and every way to corrupt an object fails closed."""

from __future__ import annotations

import hashlib
import itertools
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable

import pytest

from app.content import envelope
from app.content.envelope import (
    HEADER_BYTES,
    SEALED_SEGMENT_BYTES,
    SEGMENT_BYTES,
    ContentIntegrityError,
    decrypt_stream,
    encrypt_stream,
    sealed_size,
)
from app.content.key_manager import EncryptionContext, UnwrapError
from app.content.openbao_transit import OpenBaoTransitKeyManager

DATA_KEY = bytes(range(32))
CONTEXT = EncryptionContext(tenant_id=uuid.uuid4(), document_id=uuid.uuid4())


async def stream(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    """An async stream of `parts`."""
    for part in parts:
        yield part


async def collect(chunks: AsyncIterable[bytes]) -> bytes:
    """All bytes of an async stream."""
    return b"".join([chunk async for chunk in chunks])


async def seal_bytes(plaintext: bytes, context: EncryptionContext = CONTEXT) -> bytes:
    return await collect(encrypt_stream(stream([plaintext]), DATA_KEY, context))


async def open_bytes(sealed: bytes, context: EncryptionContext = CONTEXT) -> bytes:
    return await collect(decrypt_stream(stream([sealed]), DATA_KEY, context))


def segments(sealed: bytes) -> tuple[bytes, list[bytes]]:
    """Split a sealed object into its header and its sealed segments."""
    body = sealed[HEADER_BYTES:]
    size = SEALED_SEGMENT_BYTES
    return sealed[:HEADER_BYTES], [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize(
    "size",
    [0, 1, SEGMENT_BYTES - 1, SEGMENT_BYTES, SEGMENT_BYTES + 1, 3 * SEGMENT_BYTES, 200_001],
)
async def test_round_trip_at_segment_boundaries(size: int) -> None:
    plaintext = os.urandom(size)
    sealed = await seal_bytes(plaintext)
    assert len(sealed) == sealed_size(size)
    assert size < 16 or plaintext[:16] not in sealed
    assert await open_bytes(sealed) == plaintext


async def test_round_trip_whatever_the_chunking() -> None:
    plaintext = os.urandom(5 * SEGMENT_BYTES + 123)
    cuts = [0, 1, 7, 1000, SEGMENT_BYTES + 5, 3 * SEGMENT_BYTES, len(plaintext)]
    pieces = [plaintext[a:b] for a, b in itertools.pairwise(cuts)]
    sealed = await collect(encrypt_stream(stream(pieces), DATA_KEY, CONTEXT))
    one_byte_at_a_time = stream(sealed[i : i + 1] for i in range(len(sealed)))
    assert await collect(decrypt_stream(one_byte_at_a_time, DATA_KEY, CONTEXT)) == plaintext


async def test_the_same_plaintext_seals_differently_each_time() -> None:
    plaintext = b"same bytes"
    assert await seal_bytes(plaintext) != await seal_bytes(plaintext)


async def test_truncation_at_a_segment_boundary_fails() -> None:
    sealed = await seal_bytes(os.urandom(3 * SEGMENT_BYTES + 10))
    header, parts = segments(sealed)
    for kept in range(len(parts)):
        with pytest.raises(ContentIntegrityError):
            await open_bytes(header + b"".join(parts[:kept]))


async def test_truncation_inside_a_segment_or_the_header_fails() -> None:
    sealed = await seal_bytes(os.urandom(2 * SEGMENT_BYTES))
    for length in [0, 5, HEADER_BYTES, HEADER_BYTES + 15, HEADER_BYTES + 1000, len(sealed) - 1]:
        with pytest.raises(ContentIntegrityError):
            await open_bytes(sealed[:length])


async def test_reordered_or_duplicated_segments_fail() -> None:
    sealed = await seal_bytes(os.urandom(3 * SEGMENT_BYTES + 10))
    header, parts = segments(sealed)
    for order in ([1, 0, 2, 3], [0, 2, 1, 3], [0, 0, 1, 2, 3], [0, 1, 3]):
        with pytest.raises(ContentIntegrityError):
            await open_bytes(header + b"".join(parts[i] for i in order))


async def test_a_flipped_bit_anywhere_fails_and_releases_no_unverified_bytes() -> None:
    plaintext = os.urandom(2 * SEGMENT_BYTES + 100)
    sealed = await seal_bytes(plaintext)
    for position in [0, 10, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + SEGMENT_BYTES + 3]:
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        released = bytearray()

        async def read_all(sealed: bytes, into: bytearray = released) -> None:
            async for chunk in decrypt_stream(stream([sealed]), DATA_KEY, CONTEXT):
                into += chunk

        with pytest.raises(ContentIntegrityError):
            await read_all(bytes(tampered))
        # Only whole, verified segments before the damage come out, and they are the original.
        assert plaintext.startswith(bytes(released))
        assert len(released) % SEGMENT_BYTES == 0


async def test_another_documents_or_tenants_context_fails_even_with_the_right_data_key() -> None:
    sealed = await seal_bytes(b"tenant A, document 1")
    other_document = EncryptionContext(CONTEXT.tenant_id, uuid.uuid4())
    other_tenant = EncryptionContext(uuid.uuid4(), CONTEXT.document_id)
    for context in (other_document, other_tenant):
        with pytest.raises(ContentIntegrityError):
            await open_bytes(sealed, context)


async def test_a_wrong_data_key_fails() -> None:
    sealed = await seal_bytes(b"secret")
    with pytest.raises(ContentIntegrityError):
        await collect(decrypt_stream(stream([sealed]), bytes(32), CONTEXT))


async def test_memory_stays_flat_for_a_large_stream() -> None:
    """50 MB through seal and unseal: peak traced memory is a few segments, not the object."""
    total = 50 * 1024 * 1024
    chunk = os.urandom(256 * 1024)
    expected = hashlib.sha256()

    async def plaintext() -> AsyncIterator[bytes]:
        for _ in range(total // len(chunk)):
            expected.update(chunk)
            yield chunk

    actual = hashlib.sha256()
    size = 0
    tracemalloc.start()
    try:
        sealed = encrypt_stream(plaintext(), DATA_KEY, CONTEXT)
        async for piece in decrypt_stream(sealed, DATA_KEY, CONTEXT):
            actual.update(piece)
            size += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == total
    assert actual.digest() == expected.digest()
    assert peak < 16 * SEGMENT_BYTES, f"peak {peak} bytes for a {total}-byte stream"


async def test_wrapped_keys_and_objects_swapped_between_tenants_and_documents_fail(
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    """A tenant's key never opens another tenant's object, nor one document another's."""
    tenant_a, tenant_b = uuid.uuid4(), uuid.uuid4()
    key_a = await key_manager.create_tenant_key(tenant_a)
    key_b = await key_manager.create_tenant_key(tenant_b)
    doc_a = EncryptionContext(tenant_a, uuid.uuid4())
    doc_a2 = EncryptionContext(tenant_a, uuid.uuid4())
    doc_b = EncryptionContext(tenant_b, uuid.uuid4())

    async def sealed(key_ref: str, context: EncryptionContext, text: bytes) -> tuple[bytes, bytes]:
        content = await envelope.seal(key_manager, key_ref, context, stream([text]))
        return content.wrapped_key, await collect(content.chunks)

    wrapped_a, object_a = await sealed(key_a, doc_a, b"A's record")
    wrapped_a2, object_a2 = await sealed(key_a, doc_a2, b"A's other record")
    wrapped_b, object_b = await sealed(key_b, doc_b, b"B's record")

    opened = await envelope.unseal(key_manager, key_a, wrapped_a, doc_a, stream([object_a]))
    assert await collect(opened) == b"A's record"

    # A's wrapped key under B's tenant key, or under A's key but presented for B's document.
    with pytest.raises(UnwrapError):
        await envelope.unseal(key_manager, key_b, wrapped_a, doc_b, stream([object_a]))
    with pytest.raises(UnwrapError):
        await envelope.unseal(key_manager, key_a, wrapped_a, doc_a2, stream([object_a]))
    # B's object served where A's row points (A's key, A's context): wrong data key.
    with pytest.raises(ContentIntegrityError):
        await collect(
            await envelope.unseal(key_manager, key_a, wrapped_a, doc_a, stream([object_b]))
        )
    # Both the wrapped key and the object moved from document a2 onto document a's row.
    with pytest.raises(UnwrapError):
        await envelope.unseal(key_manager, key_a, wrapped_a2, doc_a, stream([object_a2]))
    assert wrapped_b != wrapped_a
