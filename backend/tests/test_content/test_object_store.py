"""The S3 object store against the real SeaweedFS gateway (signatures checked)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from aiobotocore.session import get_session

from app.content import envelope
from app.content.embedded_process import free_ports
from app.content.embedded_seaweedfs import EmbeddedS3
from app.content.key_manager import EncryptionContext
from app.content.object_store import (
    PART_BYTES,
    ObjectNotFoundError,
    S3ObjectStore,
    StorageUnavailableError,
)
from app.content.openbao_transit import OpenBaoTransitKeyManager
from tests.conftest import s3_location
from tests.test_content.test_envelope import collect, stream


def new_prefix() -> str:
    """A key prefix no other test uses."""
    return f"test/{uuid.uuid4()}/"


async def test_put_get_head_delete(object_store: S3ObjectStore) -> None:
    key = new_prefix() + "small"
    info = await object_store.put_stream(key, stream([b"hello ", b"world"]), content_type="a/b")
    assert info.size == 11
    head = await object_store.head(key)
    assert head is not None
    assert (head.size, head.etag, head.content_type) == (11, info.etag, "a/b")
    assert await collect(await object_store.get_stream(key)) == b"hello world"
    await object_store.delete(key)
    assert await object_store.head(key) is None
    with pytest.raises(ObjectNotFoundError):
        await object_store.get_stream(key)
    await object_store.delete(key)  # deleting a missing object is fine


async def test_large_object_goes_up_in_parts_and_comes_back_whole(
    object_store: S3ObjectStore,
) -> None:
    key = new_prefix() + "large"
    data = os.urandom(2 * PART_BYTES + 12345)
    pieces = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    info = await object_store.put_stream(key, stream(pieces), content_type="x/y")
    assert info.size == len(data)
    assert "-" in info.etag  # a multipart ETag: "<md5 of part md5s>-<parts>"
    assert hashlib.sha256(await collect(await object_store.get_stream(key))).digest() == (
        hashlib.sha256(data).digest()
    )


@pytest.mark.parametrize("size", [1000, PART_BYTES + 1000], ids=["single-put", "multipart"])
async def test_a_failed_upload_leaves_no_object_and_no_pending_parts(
    object_store: S3ObjectStore, embedded_s3: EmbeddedS3, size: int
) -> None:
    key = new_prefix() + "interrupted"

    async def breaks_off() -> AsyncIterator[bytes]:
        yield os.urandom(size)
        yield os.urandom(size)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await object_store.put_stream(key, breaks_off(), content_type="x/y")
    assert await object_store.head(key) is None
    location = s3_location(embedded_s3)
    async with get_session().create_client(
        "s3",
        endpoint_url=location.endpoint_url,
        region_name=location.region,
        aws_access_key_id=location.access_key_id,
        aws_secret_access_key=location.secret_access_key,
    ) as client:
        pending = await client.list_multipart_uploads(Bucket=location.bucket, Prefix=key)
    assert pending.get("Uploads", []) == []


async def test_list_by_prefix(object_store: S3ObjectStore) -> None:
    prefix = new_prefix()
    for name, body in [("a", b"1"), ("b/c", b"22")]:
        await object_store.put_stream(prefix + name, stream([body]), content_type="x/y")
    await object_store.put_stream(new_prefix() + "elsewhere", stream([b"3"]), content_type="x/y")
    listed = {item.key: item.size async for item in object_store.list(prefix)}
    assert listed == {prefix + "a": 1, prefix + "b/c": 2}


async def test_a_wrong_secret_is_refused_by_the_gateway(embedded_s3: EmbeddedS3) -> None:
    store = await S3ObjectStore.open(s3_location(embedded_s3, secret_access_key="wrong"))
    try:
        with pytest.raises(StorageUnavailableError, match="SignatureDoesNotMatch"):
            await store.put_stream(new_prefix() + "x", stream([b"x"]), content_type="x/y")
        with pytest.raises(StorageUnavailableError):
            await store.check()
    finally:
        await store.close()


async def test_unsigned_requests_are_refused(
    object_store: S3ObjectStore, embedded_s3: EmbeddedS3
) -> None:
    key = new_prefix() + "private"
    await object_store.put_stream(key, stream([b"confidential bytes"]), content_type="x/y")
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{embedded_s3.endpoint_url}/{embedded_s3.bucket}/{key}")
    assert response.status_code == 403
    assert b"confidential bytes" not in response.content


async def test_an_unreachable_store_is_unavailable(embedded_s3: EmbeddedS3) -> None:
    (port,) = free_ports(1)
    store = await S3ObjectStore.open(
        s3_location(embedded_s3, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)
    )
    try:
        with pytest.raises(StorageUnavailableError):
            await store.get_stream("anything")
    finally:
        await store.close()


async def test_sealed_content_through_the_store_round_trips_with_flat_memory(
    object_store: S3ObjectStore, key_manager: OpenBaoTransitKeyManager
) -> None:
    """64 MB sealed into S3 and unsealed back out: memory bounded by a few parts (~3 measured:
    the part being filled, its copy, botocore's), well below the object's size."""
    context = EncryptionContext(uuid.uuid4(), uuid.uuid4())
    key_ref = await key_manager.create_tenant_key(context.tenant_id)
    chunk = os.urandom(256 * 1024)
    total = 64 * 1024 * 1024
    sent = hashlib.sha256()

    async def plaintext() -> AsyncIterator[bytes]:
        for _ in range(total // len(chunk)):
            sent.update(chunk)
            yield chunk

    key = new_prefix() + "sealed"
    received = hashlib.sha256()
    tracemalloc.start()
    try:
        sealed = await envelope.seal(key_manager, key_ref, context, plaintext())
        info = await object_store.put_stream(key, sealed.chunks, content_type="x/y")
        opened = await envelope.unseal(
            key_manager, key_ref, sealed.wrapped_key, context, await object_store.get_stream(key)
        )
        async for piece in opened:
            received.update(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == envelope.sealed_size(total)
    assert received.digest() == sent.digest()
    assert peak < 4 * PART_BYTES <= total / 2, f"peak {peak} bytes for a {total}-byte object"


async def test_processes_ensuring_a_new_bucket_at_once_all_succeed(embedded_s3: EmbeddedS3) -> None:
    # `make run` starts the server and the worker together, and both ensure the embedded
    # bucket: the one that loses the race between HEAD and CREATE must not fail (CI's README
    # upload got a 503 from BucketAlreadyOwnedByYou).
    location = s3_location(embedded_s3, bucket=f"race-{uuid.uuid4().hex[:12]}")
    stores = [await S3ObjectStore.open(location) for _ in range(10)]
    try:
        await asyncio.gather(*(store.ensure_bucket() for store in stores))
        await stores[0].check()
    finally:
        for store in stores:
            await store.close()
