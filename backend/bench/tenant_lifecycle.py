"""A tenant's end of life at size: export MB/s, and the time to offboard N documents.

One tenant with `--docs` documents, each with `--doc-bytes` of content sealed under the tenant's
own OpenBao key in SeaweedFS (both embedded, throw-away), one audit row per document. Then:
export (rows, audit chain, signed head, every document decrypted) to a file, schedule, and
execute the offboarding (key destroyed, every object deleted, rows erased). Prints a table;
peak RSS is the bench process's, sampled during the export.

    make bench-lifecycle                  # 10,000 documents of 4 KiB
    cd backend && python -m bench.tenant_lifecycle --docs 1000 --doc-bytes 65536
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert

from app.content import envelope
from app.content.embedded_openbao import start_openbao
from app.content.embedded_seaweedfs import start_seaweedfs
from app.content.key_manager import EncryptionContext
from app.content.object_store import S3Location, S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.config import load_settings
from app.database import migrations
from app.database.engine import build_engine
from app.database.session import admin_transaction, make_sessionmaker
from app.models import AuditLog, Document, Tenant, User
from app.services import tenant_export as export_service
from app.services import tenant_lifecycle as lifecycle_service
from app.services.actor import Actor
from testkit import database_harness as harness

OPERATOR = Actor.operator()
CONCURRENCY = 16


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


class PeakRss:
    """Samples this process's RSS every 50 ms in a thread; `.peak` in bytes."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _seed(
    sessions: Any, store: S3ObjectStore, keys: OpenBaoTransitKeyManager, docs: int, size: int
) -> uuid.UUID:
    """The tenant, its documents with content sealed under its key in the object store."""
    async with admin_transaction(sessions) as session:
        tenant = Tenant(name="bench tenant")
        session.add(tenant)
        await session.flush()
        tenant.kms_key_arn = await keys.create_tenant_key(tenant.id)
        user = User(tenant_id=tenant.id, email="bench@example.org", external_idp_id="bench")
        session.add(user)
        await session.flush()
        tenant_id, user_id, key_ref = tenant.id, user.id, tenant.kms_key_arn
    ids = [uuid.uuid4() for _ in range(docs)]
    wrapped: dict[uuid.UUID, bytes] = {}
    content = os.urandom(size)
    gate = asyncio.Semaphore(CONCURRENCY)

    def object_key(doc_id: uuid.UUID) -> str:
        return f"tenants/{tenant_id}/documents/{doc_id}"

    async def put(doc_id: uuid.UUID) -> None:
        async with gate:
            context = EncryptionContext(tenant_id, doc_id)
            sealed = await envelope.seal(keys, key_ref, context, _chunks(content))
            data = b"".join([chunk async for chunk in sealed.chunks])
            await store.put_stream(object_key(doc_id), _chunks(data), content_type="x/y")
            wrapped[doc_id] = sealed.wrapped_key

    await asyncio.gather(*(put(doc_id) for doc_id in ids))
    # The content columns as an upload records them: export and offboarding find the object.
    rows = [
        {
            "id": doc_id,
            "tenant_id": tenant_id,
            "user_id": user_id,
            "s3_bucket": "bench",
            "s3_key": object_key(doc_id),
            "filename": f"doc-{n}.bin",
            "content_type": "application/octet-stream",
            "size_bytes": size,
            "status": "completed",
            "content_object_key": object_key(doc_id),
            "content_wrapped_key": wrapped[doc_id],
            "content_key_ref": key_ref,
            "content_sha256": hashlib.sha256(content).hexdigest(),
            "content_uploaded_at": datetime.now(UTC),
        }
        for n, doc_id in enumerate(ids)
    ]
    audit_rows = [
        {
            "tenant_id": tenant_id,
            "action": "document.create",
            "resource_type": "document",
            "resource_id": doc_id,
            "metadata": {"source": "bench", "changed": ["filename"]},
        }
        for doc_id in ids
    ]
    for start in range(0, docs, 1000):
        async with admin_transaction(sessions) as session:
            await session.execute(insert(Document.__table__), rows[start : start + 1000])
            await session.execute(insert(AuditLog.__table__), audit_rows[start : start + 1000])
    return tenant_id


def _row(step: str, docs: int, size: float, seconds: float, extra: str = "") -> str:
    rate = f"{size / 2**20 / seconds:8.1f}" if size else "       -"
    return (
        f"| {step:<28} | {docs:>9} | {size / 2**20:9.1f} | {seconds:8.1f} | {rate} | {extra:<22} |"
    )


async def run(
    docs: int,
    doc_bytes: int,
    work: Path,
    export_rounds: int = 1,
    compare_prefetch: tuple[int, ...] = (),
) -> None:
    """Seed, export (one document at a time and as the app does, side by side), offboard;
    print the table."""
    server = harness.start_test_server()
    harness.ensure_migrator_role(server)
    name = harness.create_database(server, owner=harness.MIGRATOR_ROLE)
    harness.bootstrap_least_privilege(server, name)
    owner_url = server.url(name, username=harness.MIGRATOR_ROLE, password=harness.MIGRATOR_PASSWORD)
    migrations.upgrade(owner_url, None)  # a shared server's app_runtime keeps its password
    s3 = start_seaweedfs(work / "seaweedfs", stop_at_exit=True)
    bao = start_openbao(work / "openbao", stop_at_exit=True)
    settings = load_settings(
        ENVIRONMENT="test",
        DATABASE_URL=owner_url.render_as_string(hide_password=False),
        LOG_LEVEL="WARNING",
    )
    engine = build_engine(
        owner_url,
        settings,
        pool_size=2,
        max_overflow=0,
        server_settings={"statement_timeout": "0", "idle_in_transaction_session_timeout": "0"},
    )
    sessions = make_sessionmaker(engine)
    store = await S3ObjectStore.open(
        S3Location(
            bucket=s3.bucket,
            region=s3.region,
            endpoint_url=s3.endpoint_url,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key,
        )
    )
    await store.ensure_bucket()
    keys = OpenBaoTransitKeyManager(bao.address, bao.token)
    lines = []
    try:
        started = time.perf_counter()
        tenant_id = await _seed(sessions, store, keys, docs, doc_bytes)
        lines.append(
            _row("seed (not the subject)", docs, docs * doc_bytes, time.perf_counter() - started)
        )
        # What the API and the CLI use: unwrap the data key, open the object, verify it.
        read_content = export_service.content_reader(store, keys)
        archive = work / "export.tar"
        snapshots = make_sessionmaker(engine.execution_options(isolation_level="REPEATABLE READ"))

        async def export(prefetch: int) -> tuple[float, float, int]:
            """One export with `prefetch` documents opened ahead: seconds, RSS growth, bytes."""
            summary = export_service.ExportSummary(tenant_id)
            rss_before = psutil.Process().memory_info().rss
            started = time.perf_counter()
            with PeakRss() as rss, archive.open("wb") as out:
                async with admin_transaction(snapshots) as session:
                    async for chunk in export_service.stream_archive(
                        session,
                        tenant_id,
                        anchor_key=Ed25519PrivateKey.generate(),
                        read_content=read_content,
                        summary=summary,
                        content_prefetch=prefetch,
                    ):
                        out.write(chunk)
            growth = (rss.peak - rss_before) / 2**20
            return time.perf_counter() - started, growth, summary.archive_bytes

        # Side by side, interleaved (1, default, 1, default, ...): the default's gain over
        # one document at a time is a ratio measured under the same load. Best of the rounds.
        chosen = export_service.CONTENT_PREFETCH
        best: dict[int, tuple[float, float, int]] = {}
        for _round in range(export_rounds):
            for prefetch in dict.fromkeys((1, chosen, *compare_prefetch)):
                result = await export(prefetch)
                if prefetch not in best or result[0] < best[prefetch][0]:
                    best[prefetch] = result
        for prefetch, (seconds, growth, archive_bytes) in best.items():
            ratio = best[1][0] / seconds
            lines.append(
                _row(
                    f"export, {prefetch} opened ahead" + (" *" if prefetch == chosen else ""),
                    docs,
                    archive_bytes,
                    seconds,
                    f"x{ratio:.2f}; RSS +{growth:.0f} MiB",
                )
            )

        async with admin_transaction(sessions) as session:
            await lifecycle_service.schedule_offboarding(session, OPERATOR, tenant_id, timedelta(0))

        async def opened_store() -> S3ObjectStore:
            return store

        async def opened_keys() -> OpenBaoTransitKeyManager:
            return keys

        started = time.perf_counter()
        report = await lifecycle_service.execute_offboarding(
            sessions, opened_store, opened_keys, OPERATOR, tenant_id
        )
        seconds = time.perf_counter() - started
        lines.append(
            _row(
                "offboard --execute",
                report.documents_deleted,
                0,
                seconds,
                f"{report.documents_deleted / seconds:.0f} documents/s",
            )
        )
    finally:
        await store.close()
        await keys.close()
        await engine.dispose()
        s3.stop()
        bao.stop()
        harness.drop_database(server, name)
    load = os.getloadavg()
    print(
        f"tenant lifecycle: {docs} documents of {doc_bytes} bytes; "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    header = ("step", "documents", "MiB", "seconds", "MiB/s", "")
    print("| {:<28} | {:>9} | {:>9} | {:>8} | {:>8} | {:<22} |".format(*header))
    print(f"|{'-' * 30}|{'-' * 11}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 24}|")
    for line in lines:
        print(line)


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--doc-bytes", type=int, default=4096)
    parser.add_argument("--export-rounds", type=int, default=1, help="exports of each kind")
    parser.add_argument(
        "--prefetch", type=int, nargs="*", default=[], help="more prefetch depths to compare"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as work:
        asyncio.run(
            run(args.docs, args.doc_bytes, Path(work), args.export_rounds, tuple(args.prefetch))
        )


if __name__ == "__main__":
    main()
