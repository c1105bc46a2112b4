"""What envelope encryption costs document content: encrypted vs plain, on the same S3 server.

Side by side in one run, on one SeaweedFS and one OpenBao of the bench's own (throw-away
directories, 127.0.0.1): each round uploads an object the app's way (a fresh data key from the
tenant's key in OpenBao, AES-256-GCM segments streamed into a multipart upload,
app.services.document_content.store_content) and the same bytes as a plain object copy
(the same S3 client, no encryption), then downloads each (unwrap + verified decryption vs a
plain read). MB/s are medians over the rounds; the ratio is encrypted / plain. Also: the
process's peak RSS above its baseline while a large object is uploaded (it streams, so it
should stay near a few multipart parts whatever the size), and the KMS calls per object.

    make bench-content                 # 1 MB and 200 MB, 3 rounds
    cd backend && python -m bench.content --sizes-mb 1 200 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from app.content.embedded_openbao import start_openbao
from app.content.embedded_seaweedfs import start_seaweedfs
from app.content.envelope import decrypt_stream
from app.content.key_manager import DataKey, EncryptionContext
from app.content.object_store import S3Location, S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.services import document_content as document_content_service

MB = 1_000_000
CHUNK = 256 * 1024  # what an HTTP server hands the app at a time, roughly
_BLOCKS = [os.urandom(CHUNK) for _ in range(16)]  # incompressible, without holding the object


class CountingKeys(OpenBaoTransitKeyManager):
    """The OpenBao key manager, counting the calls the content path makes."""

    def __init__(self, address: str, token: str) -> None:
        super().__init__(address, token)
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    async def generate_data_key(self, key_ref: str, context: EncryptionContext) -> DataKey:
        """Counted."""
        self._count("generate_data_key")
        return await super().generate_data_key(key_ref, context)

    async def unwrap(self, key_ref: str, wrapped: bytes, context: EncryptionContext) -> bytes:
        """Counted."""
        self._count("unwrap")
        return await super().unwrap(key_ref, wrapped, context)


async def _body(size: int) -> AsyncIterator[bytes]:
    sent = 0
    index = 0
    while sent < size:
        chunk = _BLOCKS[index % len(_BLOCKS)][: size - sent]
        index += 1
        sent += len(chunk)
        yield chunk


class PeakRss:
    """Samples this process's RSS every few milliseconds while in use."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def above_baseline_mb(self) -> float:
        """Peak minus the RSS when sampling began, in MB."""
        return (self.peak - self.baseline) / MB


@dataclass
class Results:
    """Seconds per (size, operation) over the rounds, and peak RSS per size and way."""

    seconds: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    peak_rss_mb: dict[tuple[int, str], float] = field(default_factory=dict)

    def add(self, size: int, operation: str, seconds: float) -> None:
        """Record one timing."""
        self.seconds.setdefault((size, operation), []).append(seconds)

    def mb_per_s(self, size: int, operation: str) -> float:
        """Median throughput."""
        return size / MB / statistics.median(self.seconds[(size, operation)])


async def _drain(chunks: AsyncIterator[bytes]) -> int:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
    return total


async def _round(
    size: int,
    store: S3ObjectStore,
    keys: CountingKeys,
    key_ref: str,
    tenant_id: uuid.UUID,
    results: Results,
    measure_rss: bool,
) -> None:
    document_id = uuid.uuid4()
    target = document_content_service.UploadTarget(
        tenant_id=tenant_id,
        document_id=document_id,
        key_ref=key_ref,
        size_bytes=size,
        object_key=document_content_service.object_key(tenant_id, document_id),
    )
    plain_key = f"bench/plain/{uuid.uuid4().hex}"

    with PeakRss() as rss:
        started = time.perf_counter()
        stored = await document_content_service.store_content(target, _body(size), store, keys)
        results.add(size, "upload encrypted", time.perf_counter() - started)
    if measure_rss:
        results.peak_rss_mb[(size, "encrypted")] = rss.above_baseline_mb
    with PeakRss() as rss:
        started = time.perf_counter()
        await store.put_stream(plain_key, _body(size), content_type="application/octet-stream")
        results.add(size, "upload plain", time.perf_counter() - started)
    if measure_rss:
        results.peak_rss_mb[(size, "plain")] = rss.above_baseline_mb

    started = time.perf_counter()
    context = target.context
    data_key = await keys.unwrap(key_ref, stored.wrapped_key, context)
    sealed = await store.get_stream(stored.object_key)
    received = await _drain(decrypt_stream(sealed, data_key, context))
    results.add(size, "download encrypted", time.perf_counter() - started)
    assert received == size, (received, size)
    started = time.perf_counter()
    received = await _drain(await store.get_stream(plain_key))
    results.add(size, "download plain", time.perf_counter() - started)
    assert received == size, (received, size)

    await store.delete(stored.object_key)
    await store.delete(plain_key)


async def run(sizes_mb: list[int], rounds: int, workdir: Path) -> None:
    """Start the servers, run the rounds, print the table."""
    print(f"load average before: {_load()}")
    s3 = start_seaweedfs(workdir / "seaweedfs")
    bao = start_openbao(workdir / "openbao")
    store = await S3ObjectStore.open(
        S3Location(
            bucket=s3.bucket,
            region=s3.region,
            endpoint_url=s3.endpoint_url,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key,
        )
    )
    keys = CountingKeys(bao.address, bao.token)
    try:
        await store.ensure_bucket()
        tenant_id = uuid.uuid4()
        key_ref = await keys.create_tenant_key(tenant_id)
        results = Results()
        sizes = [size_mb * MB for size_mb in sizes_mb]
        await _round(MB, store, keys, key_ref, tenant_id, Results(), False)  # warm-up
        keys.calls.clear()
        objects = 0
        for _ in range(rounds):
            for size in sizes:
                await _round(size, store, keys, key_ref, tenant_id, results, True)
                objects += 1
        _print(results, sizes, rounds, keys.calls, objects)
    finally:
        await keys.close()
        await store.close()
        s3.stop()
        bao.stop()
    print(f"load average after: {_load()}")


def _print(
    results: Results, sizes: list[int], rounds: int, calls: dict[str, int], objects: int
) -> None:
    print(f"\nmedian of {rounds} round(s); same SeaweedFS, same S3 client; MB = 10^6 bytes")
    print("| size | operation | plain MB/s | encrypted MB/s | encrypted/plain |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for size in sizes:
        for operation in ("upload", "download"):
            plain = results.mb_per_s(size, f"{operation} plain")
            encrypted = results.mb_per_s(size, f"{operation} encrypted")
            print(
                f"| {size / MB:g} MB | {operation} | {plain:.1f} | {encrypted:.1f} |"
                f" {encrypted / plain:.2f} |"
            )
    print("\n| size | peak RSS above baseline, plain upload | encrypted upload |")
    print("| ---: | ---: | ---: |")
    for size in sizes:
        print(
            f"| {size / MB:g} MB | {results.peak_rss_mb[(size, 'plain')]:.1f} MB |"
            f" {results.peak_rss_mb[(size, 'encrypted')]:.1f} MB |"
        )
    print("\n| KMS call | per object |")
    print("| --- | ---: |")
    for name in ("generate_data_key", "unwrap"):
        print(f"| {name} | {calls.get(name, 0) / objects:g} |")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[1, 200])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-content-") as workdir:
        asyncio.run(run(args.sizes_mb, args.rounds, Path(workdir)))


if __name__ == "__main__":
    main()
