"""Object storage: one small async interface and its S3 implementation (aiobotocore).

The same code talks to AWS S3 in production and to the embedded SeaweedFS here. Objects are
streamed both ways: an upload is buffered one multipart part at a time (PART_BYTES), a
download is read in chunks, so memory stays flat whatever the object's size. What is stored is
already ciphertext (app.content.envelope); this layer never sees plaintext.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# S3's smallest part is 5 MiB (all but the last) and an upload has at most 10,000 parts: 8 MiB
# parts allow objects up to ~78 GiB and bound an upload's memory to about two parts.
PART_BYTES = 8 * 1024 * 1024
READ_CHUNK_BYTES = 256 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class ObjectStoreError(RuntimeError):
    """Base of the errors an object store raises."""


class ObjectNotFoundError(ObjectStoreError):
    """No object has that key."""


class StorageUnavailableError(ObjectStoreError):
    """The store did not answer, refused our credentials, or failed; callers answer 503."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str
    size: int
    etag: str
    last_modified: datetime
    content_type: str | None = None


class ObjectStore(Protocol):
    """Where document content (ciphertext) lives, addressed by key."""

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str
    ) -> ObjectInfo:
        """Store `chunks` under `key` (replacing any object there); nothing is visible until
        the last chunk is stored, and a failed upload leaves no object."""
        ...

    async def get_stream(self, key: str) -> AsyncIterator[bytes]:
        """Open `key` for reading (ObjectNotFoundError now, not at the first chunk)."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and time, or None if there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Delete `key`; deleting a missing object is not an error."""
        ...

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (for the orphan sweep)."""
        ...

    async def abort_incomplete_uploads(self, prefix: str, started_before: datetime) -> int:
        """Abort multipart uploads under `prefix` begun before `started_before` (their parts
        are invisible but kept and billed); how many were aborted."""
        ...

    async def check(self) -> None:
        """Raise StorageUnavailableError unless the bucket answers (readiness)."""
        ...


@dataclass(frozen=True)
class S3Location:
    """Which S3 to use and how to sign for it."""

    bucket: str
    region: str | None = None
    endpoint_url: str | None = None  # None: AWS's own endpoint for the region
    access_key_id: str | None = None  # None: the AWS default chain (env, instance role, ...)
    secret_access_key: str | None = None
    ca_bundle: str | None = None  # None: the system's trusted certificates
    max_attempts: int = 3  # botocore's standard retry mode, with backoff


def _take(buffer: bytearray, size: int) -> bytes:
    """Remove and return the first `size` bytes of `buffer`, copying them once."""
    with memoryview(buffer) as view:
        head = bytes(view[:size])
    del buffer[:size]
    return head


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code"))


def _is_not_found(error: ClientError) -> bool:
    return _error_code(error) in _NOT_FOUND


@contextlib.contextmanager
def _translated(key: str) -> Any:
    """Map botocore's errors onto ours: a missing key, or the store being unavailable."""
    try:
        yield
    except ClientError as exc:
        if _is_not_found(exc):
            raise ObjectNotFoundError(key) from exc
        raise StorageUnavailableError(f"object storage refused the request: {exc}") from exc
    except (BotoCoreError, OSError, TimeoutError) as exc:
        raise StorageUnavailableError(f"object storage unreachable: {type(exc).__name__}") from exc


class S3ObjectStore:
    """ObjectStore over one S3 bucket (AWS, SeaweedFS, or any S3-compatible server)."""

    def __init__(self, client: S3Client, bucket: str, stack: AsyncExitStack) -> None:
        self._client = client
        self._bucket = bucket
        self._stack = stack

    @classmethod
    async def open(cls, location: S3Location) -> S3ObjectStore:
        """Create the client (one connection pool per process); `close()` releases it."""
        # Imported here, not at the top: see AwsKmsKeyManager.open (import cost for commands
        # that never touch S3).
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(
            region_name=location.region,
            signature_version="s3v4",
            connect_timeout=3,
            read_timeout=30,
            retries={"max_attempts": location.max_attempts, "mode": "standard"},
            # A custom endpoint (SeaweedFS, MinIO) serves buckets as paths, not subdomains.
            s3={"addressing_style": "path" if location.endpoint_url else "auto"},
        )
        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=location.endpoint_url,
                aws_access_key_id=location.access_key_id,
                aws_secret_access_key=location.secret_access_key,
                verify=location.ca_bundle,
                config=config,
            )
        )
        return cls(client, location.bucket, stack)

    async def close(self) -> None:
        """Close the client's connections."""
        await self._stack.aclose()

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (the embedded server and tests only)."""
        with _translated(self._bucket):
            try:
                await self._client.head_bucket(Bucket=self._bucket)
            except ClientError as exc:
                if not _is_not_found(exc):
                    raise
                try:
                    await self._client.create_bucket(Bucket=self._bucket)
                except ClientError as create_error:
                    # Another process made it first (`make run` starts the server and the
                    # worker together, and both ensure the bucket), or botocore retried a
                    # create whose answer was lost: either way the bucket is there.
                    if _error_code(create_error) != "BucketAlreadyOwnedByYou":
                        raise

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str
    ) -> ObjectInfo:
        """Upload in PART_BYTES parts (one PutObject when the whole thing fits in one part)."""
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        size = 0
        try:
            # The source's own errors (a client that went away) propagate as they are; only
            # the store's calls are translated into ObjectStore errors.
            async for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                while len(buffer) >= PART_BYTES:
                    part = _take(buffer, PART_BYTES)
                    with _translated(key):
                        if upload_id is None:
                            created = await self._client.create_multipart_upload(
                                Bucket=self._bucket, Key=key, ContentType=content_type
                            )
                            upload_id = created["UploadId"]
                        parts.append(await self._upload_part(key, upload_id, len(parts) + 1, part))
            with _translated(key):
                if upload_id is None:
                    await self._client.put_object(
                        Bucket=self._bucket, Key=key, Body=bytes(buffer), ContentType=content_type
                    )
                else:
                    if buffer:
                        last = bytes(buffer)
                        parts.append(await self._upload_part(key, upload_id, len(parts) + 1, last))
                    await self._client.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                    )
                    upload_id = None
        finally:
            if upload_id is not None:
                # Parts of an abandoned upload are invisible but billed; a crash before this
                # line is what the bucket's AbortIncompleteMultipartUpload rule is for.
                with contextlib.suppress(ClientError, BotoCoreError, OSError):
                    await self._client.abort_multipart_upload(
                        Bucket=self._bucket, Key=key, UploadId=upload_id
                    )
        info = await self.head(key)
        if info is None or info.size != size:
            raise StorageUnavailableError(f"object storage lost the upload of {key}")
        return info

    async def _upload_part(
        self, key: str, upload_id: str, number: int, body: bytes
    ) -> dict[str, Any]:
        answer = await self._client.upload_part(
            Bucket=self._bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def get_stream(self, key: str) -> AsyncIterator[bytes]:
        """Open the object; iterate the result for its bytes, READ_CHUNK_BYTES at a time."""
        with _translated(key):
            answer = await self._client.get_object(Bucket=self._bucket, Key=key)
        return self._chunks(key, answer["Body"])

    async def _chunks(self, key: str, body: Any) -> AsyncIterator[bytes]:
        try:
            with _translated(key):
                async for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                    yield chunk
        finally:
            body.close()

    async def head(self, key: str) -> ObjectInfo | None:
        """HeadObject, or None for a missing key."""
        try:
            with _translated(key):
                answer = await self._client.head_object(Bucket=self._bucket, Key=key)
        except ObjectNotFoundError:
            return None
        return ObjectInfo(
            key=key,
            size=answer["ContentLength"],
            etag=answer["ETag"].strip('"'),
            last_modified=answer["LastModified"],
            content_type=answer.get("ContentType"),
        )

    async def delete(self, key: str) -> None:
        """DeleteObject (S3 answers success for a missing key too)."""
        with _translated(key):
            await self._client.delete_object(Bucket=self._bucket, Key=key)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """ListObjectsV2, page by page."""
        paginator = self._client.get_paginator("list_objects_v2")
        with _translated(prefix):
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=item["Key"],
                        size=item["Size"],
                        etag=item["ETag"].strip('"'),
                        last_modified=item["LastModified"],
                    )

    async def abort_incomplete_uploads(self, prefix: str, started_before: datetime) -> int:
        """ListMultipartUploads, then AbortMultipartUpload for each one begun too long ago."""
        paginator = self._client.get_paginator("list_multipart_uploads")
        stale: list[tuple[str, str]] = []
        with _translated(prefix):
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < started_before:
                        stale.append((upload["Key"], upload["UploadId"]))
            for key, upload_id in stale:
                await self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id
                )
        return len(stale)

    async def check(self) -> None:
        """HeadBucket: the store answers and our credentials are accepted."""
        with _translated(self._bucket):
            await self._client.head_bucket(Bucket=self._bucket)
