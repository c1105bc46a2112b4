"""`make bench-ingest`: the ingestion pipeline end to end, and text search beside raw search.

On a fresh database (the test server: embedded unless TEST_DATABASE_URL is set) with its own
SeaweedFS and OpenBao, using notes of the labelled clinical corpus (testkit/clinical_corpus.py)
repeated into longer documents:

1. throughput: --docs documents stored, then drained by one worker at concurrency 1 and
   again (new documents) at concurrency 2: documents per second through the whole pipeline
   (decrypt, extract, chunk, embed, seal, write);
2. latency: with a worker waiting, documents stored one at a time: upload (content stored and
   job committed) to searchable (status completed), p50 / p95;
3. search: per tenant class (small: --small-docs documents; large: everything above, with the
   chunk indexes built by the maintenance code), text-search p95 (embed the question, search
   the chunks, open the snippets) and raw-embedding search p95 (the same chunk search with a
   vector the client already has), measured alternately in one pass.

Prints the load average with each table. Speed is never asserted (the smoke run only checks the
table is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.backends import ContentBackends
from app.content.embedded_openbao import start_openbao
from app.content.embedded_seaweedfs import start_seaweedfs
from app.content.object_store import S3Location, S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.config import load_settings
from app.database import vector_search
from app.database.engine import build_engine, build_runtime_engine, targets_for
from app.database.session import admin_transaction, make_sessionmaker, tenant_transaction
from app.ingest.embeddings import LocalEmbedder
from app.models import Document
from app.services import documents as documents_service
from app.services import jobs, vector_indexes
from app.services.actor import Actor
from testkit import database_harness as harness
from testkit.clinical_corpus import clinical_corpus
from testkit.factories import make_document, make_tenant, make_user
from testkit.ingest_helpers import drain_queue, ingest_context, store_content


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _texts(count: int, repeat: int) -> list[str]:
    notes = clinical_corpus()
    return [" ".join([notes[i % len(notes)].note] * repeat) for i in range(count)]


async def _new_tenant(
    admin: async_sessionmaker[AsyncSession], documents: int
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    async with admin_transaction(admin) as session:
        tenant = await make_tenant(session)
        user = await make_user(session, tenant)
        ids = [(await make_document(session, user)).id for _ in range(documents)]
    return tenant.id, ids


async def _run(args: argparse.Namespace, work: Path) -> None:
    server = harness.start_test_server()
    harness.ensure_migrator_role(server)
    migrated = harness.create_migrated_database(server)
    s3 = start_seaweedfs(work / "seaweedfs")
    bao = start_openbao(work / "openbao")
    settings = load_settings(
        ENVIRONMENT="test",
        DATABASE_URL=migrated.owner_url.render_as_string(hide_password=False),
        APP_RUNTIME_PASSWORD=harness.RUNTIME_PASSWORD,
        LOG_LEVEL="WARNING",
        VECTOR_INDEX_MIN_ROWS=400,
    )
    targets = targets_for(migrated.owner_url, harness.RUNTIME_PASSWORD)
    runtime = build_runtime_engine(targets, settings, pool_size=4, max_overflow=2)
    owner = build_engine(
        migrated.owner_url,
        settings,
        pool_size=2,
        max_overflow=2,
        server_settings={"statement_timeout": "0"},
    )
    sessions, admin = make_sessionmaker(runtime), make_sessionmaker(owner)
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
    backends = ContentBackends(settings, store=store, keys=keys, owned=False)
    embedder = LocalEmbedder()
    context = ingest_context(sessions, backends, settings, embedder)
    texts = _texts(args.docs, args.repeat)
    await embedder.embed(["warm-up: the model loads once per process"])  # not timed
    try:
        print(
            f"=== bench-ingest: {args.docs} documents of ~{len(texts[0])} characters;"
            f" chunks of {settings.INGEST_CHUNK_CHARS} chars ({_load()})"
        )
        print("\n| phase | documents | seconds | documents/s |")
        print("|---|---:|---:|---:|")
        tenants: list[uuid.UUID] = []
        for concurrency in (1, 2):
            tenant, ids = await _new_tenant(admin, args.docs)
            tenants.append(tenant)
            for document, body in zip(ids, texts, strict=True):
                await store_content(
                    sessions, backends, tenant, document, body.encode(), "text/plain"
                )
            started = time.perf_counter()
            await drain_queue(settings, migrated.owner_url, context, concurrency=concurrency)
            seconds = time.perf_counter() - started
            print(
                f"| drain, worker concurrency {concurrency} | {args.docs} | {seconds:.1f} |"
                f" {args.docs / seconds:.2f} |"
            )

        latencies = []
        tenant, ids = await _new_tenant(admin, args.latency_docs)
        queue = jobs.build_queue(settings, migrated.owner_url)
        async with queue.open_async():
            worker = asyncio.create_task(
                queue.run_worker_async(
                    install_signal_handlers=False, additional_context={jobs.CONTEXT_KEY: context}
                )
            )
            for document, body in zip(ids, texts, strict=False):
                started = time.perf_counter()
                await store_content(
                    sessions, backends, tenant, document, body.encode(), "text/plain"
                )
                while True:
                    async with tenant_transaction(sessions, tenant) as session:
                        status = await session.scalar(
                            select(Document.status).where(Document.id == document)
                        )
                    if status != "processing":
                        break
                    await asyncio.sleep(0.02)
                latencies.append(time.perf_counter() - started)
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        print(f"\nupload -> searchable, one at a time, worker waiting ({_load()})")
        print("| documents | p50 s | p95 s |\n|---:|---:|---:|")
        print(
            f"| {len(latencies)} | {statistics.median(latencies):.2f} |"
            f" {_percentile(latencies, 0.95):.2f} |"
        )

        small, small_ids = await _new_tenant(admin, args.small_docs)
        for document, body in zip(small_ids, texts, strict=False):
            await store_content(sessions, backends, small, document, body.encode(), "text/plain")
        await drain_queue(settings, migrated.owner_url, context)
        maintenance = build_engine(
            migrated.owner_url,
            settings,
            pool_size=2,
            max_overflow=0,
            server_settings={"statement_timeout": "0"},
        )
        built = await vector_indexes.maintain_indexes(
            maintenance, settings.VECTOR_INDEX_MIN_ROWS, probe_sessions=sessions
        )
        await maintenance.dispose()
        indexed = {
            r.plan.tenant_id
            for r in built
            if r.plan.table is vector_indexes.CHUNKS
            and r.plan.action is vector_indexes.Action.BUILD
        }
        questions = [item.question for item in clinical_corpus()][: args.queries]
        vectors = await embedder.embed(questions)
        print(
            f"\nsearch p95 ms per tenant class, k=10, {len(questions)} queries each,"
            f" alternating ({_load()})"
        )
        print("| tenant | chunks | chunk index | text search p95 | raw embedding p95 | text/raw |")
        print("|---|---:|---|---:|---:|---:|")
        for label, tenant in (("small", small), ("large", tenants[0])):
            text_ms, raw_ms = [], []
            actor = Actor.operator(tenant, source="bench")
            for question, vector in zip(questions, vectors, strict=True):
                async with tenant_transaction(sessions, tenant) as session:
                    started = time.perf_counter()
                    await documents_service.search_documents_by_text(
                        session, actor, backends, embedder, question, 10
                    )
                    text_ms.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    await session.execute(
                        documents_service.SEARCH_CHUNKS,
                        vector_search.search_parameters(vector, 50, None),
                    )
                    raw_ms.append((time.perf_counter() - started) * 1000)
            async with tenant_transaction(sessions, tenant) as session:
                counts = await session.execute(
                    select(Document.chunk_count).where(Document.tenant_id == tenant)
                )
                total = sum(count or 0 for count in counts.scalars())
            text_p95, raw_p95 = _percentile(text_ms, 0.95), _percentile(raw_ms, 0.95)
            print(
                f"| {label} | {total} | {'yes' if tenant in indexed else 'no (exact)'} |"
                f" {text_p95:.1f} | {raw_p95:.1f} | {text_p95 / raw_p95:.1f}x |"
            )
    finally:
        await store.close()
        await keys.close()
        await runtime.dispose()
        await owner.dispose()
        s3.stop()
        bao.stop()
        harness.drop_database(server, migrated.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100, help="documents per throughput run")
    parser.add_argument("--repeat", type=int, default=12, help="corpus notes per document")
    parser.add_argument("--latency-docs", type=int, default=20)
    parser.add_argument("--small-docs", type=int, default=10)
    parser.add_argument("--queries", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as work:
        asyncio.run(_run(args, Path(work)))


if __name__ == "__main__":
    main()
