"""Benchmark: vector search against tenant size, on loose and dense corpora, as app_runtime.

Every search reads only its own tenant's structures (issue 16): tenants over the threshold
(VECTOR_INDEX_MIN_ROWS) get an HNSW index of their own, built by the maintenance service
(app/services/vector_indexes.py, timed per tenant); the others are scanned exactly. For each
corpus this builds the synthetic documents (normalised 1024-dim vectors; Zipf tenant sizes,
a quarter of new tiny tenants, probe tenants just below and just above the threshold; a
fraction soft-deleted or not yet embedded), loads them with COPY, runs the maintenance, then
queries a ladder of tenant sizes from 1 document to the largest with every strategy, as
`app_runtime` inside a tenant transaction, and prints:

- p95 against tenant size across the threshold, with ours over the fastest correct strategy
  (recall@10 >= 0.99 as the minimum over the tenant's queries);
- recall@10, mean and minimum over queries, per tenant class;
- the per-tenant index builds (time, size) and the cost of an insert with and without one.

Corpora: *loose* = 64 clusters in a random 48-dim subspace (spread 0.6), plus noise, like
varied text embeddings; *dense* = every tenant draws from 4 tight clusters (spread 0.15), as
clinical notes all sit near each other: the hard case for HNSW.

    make bench-vector                                      # 20k docs, 50 tenants, both corpora
    make bench-vector BENCH_ARGS='--docs 200000 --tenants 500'
    ... --partitions      # also list partitions per large tenant, side by side (modest sizes)
    ... --shared-index    # also the old shared index's build and insert cost

The database is the bench's own embedded server under bench/.cache/postgres-vector (kept
between runs, so a second run with the same corpus skips the load and reports the first
build's numbers; pass --rebuild to rebuild), or a throw-away database on TEST_DATABASE_URL /
DATABASE_URL's server, whose configuration it leaves alone (bench/__init__.py).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from pgvector.sqlalchemy import Vector
from psycopg import sql
from sqlalchemy import bindparam, literal_column, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased, defer

BACKEND_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BACKEND_DIR))

from app.core.config import Settings, load_settings, normalise_database_url  # noqa: E402
from app.database import migrations  # noqa: E402
from app.database import vector_search as vector_search_service  # noqa: E402
from app.database.engine import build_runtime_engine, targets_for  # noqa: E402
from app.database.session import make_sessionmaker, tenant_transaction  # noqa: E402
from app.models import Document  # noqa: E402
from app.services import vector_indexes as vector_indexes_service  # noqa: E402

CACHE_DIR = BACKEND_DIR / "bench" / ".cache"
MAX_SHARED_BUFFERS_MB = 4096
DIMENSIONS = 1024


@dataclass(frozen=True)
class Shape:
    """How a corpus's vectors cluster: centres in a random latent subspace, and their spread."""

    clusters: int
    spread: float  # latent spread around a centre (centres have unit variance per dimension)


# Text embeddings vary along few directions: vectors come from clusters in a random 48-dim
# subspace, plus a little noise in all 1024 dims (~0.16 of the length, after normalising).
SHAPES = {"loose": Shape(clusters=64, spread=0.6), "dense": Shape(clusters=4, spread=0.15)}
LATENT_DIMENSIONS = 48
NOISE = 0.005
NEW_TENANT_SHARE = 0.25  # new tenants with 1..30 documents: the "tiny" class
ZIPF_EXPONENT = 1.1
DELETED_SHARE = 0.05
UNEMBEDDED_SHARE = 0.02
SEARCHABLE_SHARE = (1 - DELETED_SHARE) * (1 - UNEMBEDDED_SHARE)
# Probe tenants, as shares of the threshold (in searchable rows): just below and above it.
PROBES = (0.5, 0.9, 0.97, 1.03, 1.1, 2.0)
# No runtime password: queries run as app_runtime by a role switch at connection start (the
# app's fallback login mode), so the bench never changes the password of a shared server's
# app_runtime (roles are server-wide: a new password would lock the server's other users out).
RUNTIME_PASSWORD = None
K = 10
CORPUS_VERSION = 3  # bump when the generator changes: cached databases are then rebuilt
DEFAULT_THRESHOLD = Settings.model_fields["VECTOR_INDEX_MIN_ROWS"].default


@dataclass
class Corpus:
    """The synthetic documents, as arrays (row i is document i)."""

    kind: str
    ids: list[uuid.UUID]
    tenant_of: np.ndarray  # tenant index per document
    vectors: np.ndarray  # float32 (docs, 1024), unit length
    deleted: np.ndarray  # bool
    embedded: np.ndarray  # bool
    tenant_ids: list[uuid.UUID]
    basis: np.ndarray
    centres: np.ndarray
    searchable_rows: np.ndarray  # per tenant

    def searchable(self, tenant: int) -> np.ndarray:
        """Row numbers of the tenant's active, embedded documents."""
        return np.flatnonzero((self.tenant_of == tenant) & ~self.deleted & self.embedded)


def tenant_sizes(docs: int, tenants: int, threshold: int) -> list[int]:
    """Documents per tenant: tiny new tenants, probes around the threshold, Zipf for the rest."""
    rng = random.Random(7)
    new = max(1, round(tenants * NEW_TENANT_SHARE))
    tiny = [rng.randint(1, 30) for _ in range(new)]
    probes = [round(threshold * share / SEARCHABLE_SHARE) for share in PROBES]
    established = max(1, tenants - new - len(probes))
    weights = [rank**-ZIPF_EXPONENT for rank in range(1, established + 1)]
    remaining = docs - sum(tiny) - sum(probes)
    if remaining < established * 31:
        raise SystemExit(f"--docs {docs} is too few for --tenants {tenants} around {threshold}")
    sizes = [max(31, round(remaining * w / sum(weights))) for w in weights]
    sizes[0] += remaining - sum(sizes)
    return sizes + probes + tiny


def latent_space(seed: int, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """A random LATENT_DIMENSIONS-dim subspace of the 1024 dims, and cluster centres in it."""
    rng = np.random.default_rng(seed + 10)
    basis, _ = np.linalg.qr(rng.standard_normal((DIMENSIONS, LATENT_DIMENSIONS)))
    centres = rng.standard_normal((shape.clusters, LATENT_DIMENSIONS))
    return basis.astype(np.float32), centres.astype(np.float32)


def sample_vectors(
    rng: np.random.Generator,
    corpus_shape: Shape,
    basis: np.ndarray,
    centres: np.ndarray,
    count: int,
) -> np.ndarray:
    """Unit vectors like text embeddings: clustered in a low-dimensional subspace, plus noise."""
    cluster = rng.integers(0, corpus_shape.clusters, count)
    noise = rng.standard_normal((count, LATENT_DIMENSIONS)) * corpus_shape.spread
    vectors = (centres[cluster] + noise).astype(np.float32) @ basis.T
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors += rng.standard_normal((count, DIMENSIONS), dtype=np.float32) * NOISE
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build_corpus(kind: str, args: argparse.Namespace) -> Corpus:
    """Generate (or load from the cache) the corpus for these parameters."""
    shape = SHAPES[kind]
    rng = np.random.default_rng(args.seed)
    sizes = tenant_sizes(args.docs, args.tenants, args.threshold)
    tenants = len(sizes)
    tenant_of = np.repeat(np.arange(tenants), sizes)
    rng.shuffle(tenant_of)
    total = len(tenant_of)
    basis, centres = latent_space(args.seed, shape)
    path = CACHE_DIR / f"vectors-v{CORPUS_VERSION}-{kind}-{total}-{args.seed}.npy"
    if path.exists():
        vectors = np.load(path)
    else:
        vectors = np.empty((total, DIMENSIONS), dtype=np.float32)
        for start in range(0, total, 20_000):
            stop = min(total, start + 20_000)
            vectors[start:stop] = sample_vectors(rng, shape, basis, centres, stop - start)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    flags = np.random.default_rng(args.seed + 1)
    deleted = flags.random(total) < DELETED_SHARE
    embedded = flags.random(total) >= UNEMBEDDED_SHARE
    id_rng = random.Random(args.seed)
    ids = [uuid.UUID(int=id_rng.getrandbits(128), version=4) for _ in range(total)]
    tenant_ids = [uuid.UUID(int=id_rng.getrandbits(128), version=4) for _ in range(tenants)]
    searchable_rows = np.bincount(tenant_of[~deleted & embedded], minlength=tenants)
    return Corpus(
        kind,
        ids,
        tenant_of,
        vectors,
        deleted,
        embedded,
        tenant_ids,
        basis,
        centres,
        searchable_rows,
    )


# --- the database -----------------------------------------------------------------------------


def libpq(url: URL) -> str:
    """A libpq DSN from a SQLAlchemy URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def server_superuser_url(args: argparse.Namespace) -> tuple[URL, bool]:
    """The server's superuser URL, and whether the bench database should be kept afterwards."""
    external = (
        args.server_url or os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    )
    if external:
        return make_url(normalise_database_url(external)), args.keep
    from app.database import embedded

    # Its own server, not bench-rls's bench/.cache/postgres: it sets shared_buffers below.
    server = embedded.start_embedded(args.server_dir)
    with psycopg.connect(server.libpq_superuser_dsn("postgres"), autocommit=True) as conn:
        # Enough shared memory for the table and the index: the runs compare strategies on
        # a warm cache, as a production server would serve them.
        # Capped: the machine is shared, and the OS page cache holds the rest.
        wanted = f"{min(MAX_SHARED_BUFFERS_MB, max(256, args.docs * 12 // 1000))}MB"
        current = conn.execute("SHOW shared_buffers").fetchone()
        if current is None or current[0] != wanted:
            conn.execute(f"ALTER SYSTEM SET shared_buffers = '{wanted}'")
            restart = True
        else:
            restart = False
    if restart:
        server.stop()
        server.start()
    return server.superuser_url("postgres"), True


def fingerprint(kind: str, args: argparse.Namespace) -> str:
    """Identifies a corpus and schema: a cached database is reused only when it matches."""
    versions = sorted(p.name for p in (BACKEND_DIR / "alembic" / "versions").glob("*.py"))
    raw = json.dumps(
        [
            kind,
            args.docs,
            args.tenants,
            args.seed,
            args.threshold,
            versions,
            CORPUS_VERSION,
            args.index_only_ladder,
        ]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


async def prepare_database(
    args: argparse.Namespace, corpus: Corpus, below: list[uuid.UUID], ladder_ids: list[uuid.UUID]
) -> tuple[URL, dict[str, Any]]:
    """Create, migrate, load and index the bench database (or reuse a cached one)."""
    superuser, keep = server_superuser_url(args)
    name = f"bench_vectors_{corpus.kind}_{args.docs}_{args.tenants}_{args.seed}"
    url = superuser.set(database=name)
    args.keep_database = keep
    with psycopg.connect(libpq(superuser), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists and not args.rebuild:
        try:
            with psycopg.connect(libpq(url)) as conn:
                row = conn.execute("SELECT value FROM bench.meta WHERE key = 'build'").fetchone()
            if row is not None and row[0]["fingerprint"] == fingerprint(corpus.kind, args):
                migrations.upgrade(url, RUNTIME_PASSWORD)
                return url, {**row[0], "cached": True}
        except psycopg.Error:
            pass
    with psycopg.connect(libpq(superuser), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    migrations.upgrade(url, RUNTIME_PASSWORD)
    print(f"loading {len(corpus.ids)} {corpus.kind} documents into {name}", flush=True)
    build = load_corpus(url, corpus)
    print(f"loaded in {build['load_seconds']} s", flush=True)
    build["planning_ms_before"] = planning_ms(url, corpus.tenant_ids[0])
    build["indexes"] = await build_tenant_indexes(
        url,
        args.threshold,
        ladder_ids if args.index_only_ladder else None,
        args.maintenance_work_mem,
    )
    build["planning_ms_after"] = planning_ms(url, corpus.tenant_ids[0])
    build["alternatives"] = build_alternative_indexes(url, below)
    build["fingerprint"] = fingerprint(corpus.kind, args)
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA bench")
        conn.execute("CREATE TABLE bench.meta (key text PRIMARY KEY, value jsonb)")
        conn.execute(
            "INSERT INTO bench.meta VALUES ('build', %s)", (psycopg.types.json.Jsonb(build),)
        )
    return url, {**build, "cached": False}


def load_corpus(url: URL, corpus: Corpus) -> dict[str, Any]:
    """COPY the corpus in as the owner, then VACUUM ANALYZE."""
    started = time.perf_counter()
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        register_vector(conn)
        user_ids = [uuid.UUID(int=t.int ^ 1) for t in corpus.tenant_ids]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO tenants (id, name) VALUES (%s, %s)",
                [(t, f"tenant-{i}") for i, t in enumerate(corpus.tenant_ids)],
            )
            cur.executemany(
                "INSERT INTO users (id, tenant_id, email) VALUES (%s, %s, %s)",
                [
                    (u, t, f"user{i}@example.org")
                    for i, (u, t) in enumerate(zip(user_ids, corpus.tenant_ids, strict=True))
                ],
            )
        statuses = ("completed", "completed", "completed", "processing", "failed")
        types = ("application/pdf", "application/pdf", "text/plain", "text/markdown")
        columns = (
            "id, tenant_id, user_id, s3_key, s3_bucket, filename, content_type, size_bytes,"
            " status, metadata, deleted_at, embedding_vector"
        )
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY documents ({columns}) FROM STDIN WITH (FORMAT BINARY)") as copy,
        ):
            copy.set_types(
                [
                    "uuid",
                    "uuid",
                    "uuid",
                    "text",
                    "text",
                    "text",
                    "text",
                    "int8",
                    "text",
                    "jsonb",
                    "timestamptz",
                    "vector",
                ]
            )
            deleted_at = datetime.now(UTC)
            for row, doc_id in enumerate(corpus.ids):
                tenant = int(corpus.tenant_of[row])
                copy.write_row(
                    (
                        doc_id,
                        corpus.tenant_ids[tenant],
                        user_ids[tenant],
                        f"docs/{doc_id}.pdf",
                        "bench",
                        f"doc-{row}.pdf",
                        types[row % 4],
                        1000 + row,
                        statuses[row % 5],
                        psycopg.types.json.Jsonb({"team": f"team-{row % 7}"}),
                        deleted_at if corpus.deleted[row] else None,
                        corpus.vectors[row] if corpus.embedded[row] else None,
                    )
                )
        loaded = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE documents")
        row = conn.execute("SELECT pg_total_relation_size('documents')").fetchone()
        assert row is not None
    return {"load_seconds": round(loaded, 1), "table_bytes": row[0]}


def planning_ms(url: URL, tenant: uuid.UUID) -> float:
    """Median planning time of a documents listing: every partial index adds to every plan."""
    with psycopg.connect(libpq(url)) as conn:
        times = []
        for _ in range(50):
            plan = conn.execute(
                "EXPLAIN (SUMMARY, FORMAT JSON) SELECT id FROM documents WHERE tenant_id = %s"
                " AND deleted_at IS NULL ORDER BY created_at DESC, id DESC LIMIT 20",
                (tenant,),
            ).fetchone()
            assert plan is not None
            times.append(plan[0][0]["Planning Time"])
    return round(statistics.median(times), 3)


def bench_settings(url: URL) -> Settings:
    """The app's settings for the bench database (for the one engine factory)."""
    return load_settings(
        ENVIRONMENT="test",
        DATABASE_URL=url.render_as_string(hide_password=False),
        APP_RUNTIME_PASSWORD="",
        DB_STATEMENT_TIMEOUT_MS=600_000,
        DB_POOL_SIZE=1,
        DB_MAX_OVERFLOW=0,
    )


async def build_tenant_indexes(
    url: URL, threshold: int, tenants: list[uuid.UUID] | None, maintenance_work_mem: str
) -> list[dict[str, Any]]:
    """What `tenantdocs vector-indexes` does (run_maintenance: build, probe), timed per tenant.

    `tenants` limits the builds to those tenants (--index-only-ladder: the reduced 1M build).
    """

    def progress(result: vector_indexes_service.IndexResult) -> None:
        print(
            f"  {result.plan.action.value:<10} {result.plan.searchable_rows:>7} rows"
            f" {result.seconds:>8.1f} s {result.index_bytes / 2**20:>8.1f} MiB"
            f" probe {result.probe_recall}",
            flush=True,
        )

    print(f"building per-tenant indexes (threshold {threshold})", flush=True)
    results = await vector_indexes_service.run_maintenance(
        targets_for(url, RUNTIME_PASSWORD),
        bench_settings(url),
        threshold,
        maintenance_work_mem=maintenance_work_mem,
        tenants=tenants,
        on_done=progress,
    )
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("ANALYZE documents")
    return [
        {
            "tenant": str(r.plan.tenant_id),
            "rows": r.plan.searchable_rows,
            "seconds": round(r.seconds, 2),
            "bytes": r.index_bytes,
            "probe_recall": r.probe_recall,
            "kept": r.plan.action is vector_indexes_service.Action.BUILD,
        }
        for r in results
        if r.plan.action
        in (vector_indexes_service.Action.BUILD, vector_indexes_service.Action.FAILED_PROBE)
    ]


ALTERNATIVE_PREFIX = "bench_hnsw_"


def build_alternative_indexes(url: URL, tenants: list[uuid.UUID]) -> list[dict[str, Any]]:
    """The same partial index for tenants under the threshold, under a name ours never uses.

    The bench's own-index strategy walks it (the planner picks any index whose predicate
    matches), so the ladder shows what an index would give a tenant the threshold leaves on
    the exact path; search_documents() looks its index up by name, so ours still scans them.
    """
    built = []
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET max_parallel_maintenance_workers = 0")
        for tenant in tenants:
            name = vector_indexes_service.index_name(tenant)
            statement = vector_indexes_service.create_index_sql(tenant).replace(
                name, ALTERNATIVE_PREFIX + tenant.hex
            )
            started = time.perf_counter()
            conn.execute(statement)
            seconds = time.perf_counter() - started
            row = conn.execute(
                "SELECT pg_relation_size(%s::regclass), count(*) FROM documents"
                " WHERE tenant_id = %s AND embedding_vector IS NOT NULL AND deleted_at IS NULL",
                (ALTERNATIVE_PREFIX + tenant.hex, tenant),
            ).fetchone()
            assert row is not None
            built.append(
                {
                    "tenant": str(tenant),
                    "rows": row[1],
                    "seconds": round(seconds, 2),
                    "bytes": row[0],
                }
            )
        conn.execute("ANALYZE documents")
    return built


def insert_cost_ms(url: URL, tenant: uuid.UUID, rows: int, rng: np.random.Generator) -> float:
    """Mean time of one INSERT of an embedded document for `tenant` (each rolled back)."""
    with psycopg.connect(libpq(url)) as conn:
        register_vector(conn)
        user = uuid.UUID(int=tenant.int ^ 1)
        vectors = rng.standard_normal((rows, DIMENSIONS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        times = []
        for vector in vectors:
            started = time.perf_counter()
            conn.execute(
                "INSERT INTO documents (tenant_id, user_id, s3_key, s3_bucket, filename,"
                " content_type, size_bytes, embedding_vector)"
                " VALUES (%s, %s, 'k', 'b', 'f.txt', 'text/plain', 1, %s)",
                (tenant, user, vector),
            )
            times.append(time.perf_counter() - started)
            conn.rollback()
    return statistics.median(times) * 1000


# --- strategies ---------------------------------------------------------------------------------

Strategy = Callable[[AsyncSession, list[float], uuid.UUID], Awaitable[list[uuid.UUID]]]

_QUERY = bindparam("query", type_=Vector(DIMENSIONS))
# The tenant as the RLS policies read it.
_CURRENT_TENANT = literal_column(
    "(SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)"
)
_DISTANCE = Document.embedding_vector.cosine_distance(_QUERY)
_SCORED = (
    select(Document, _DISTANCE.label("distance"))
    .where(
        Document.embedding_vector.is_not(None),
        Document.deleted_at.is_(None),
        Document.tenant_id == _CURRENT_TENANT,
    )
    .offset(0)
    .subquery()
)
_SCORED_DOCUMENT = aliased(Document, _SCORED)
# Every strategy returns the same thing as ours (Documents without their embedding, and the
# distance), so the table compares strategies, not result shapes.
_EXACT = (
    select(_SCORED_DOCUMENT, _SCORED.c.distance)
    .order_by(_SCORED.c.distance, _SCORED.c.id)
    .limit(K)
    .options(defer(_SCORED_DOCUMENT.embedding_vector, raiseload=True))
)


async def exact_scan(session: AsyncSession, query: list[float], tenant: uuid.UUID) -> list[Any]:
    """Every one of the tenant's rows, through the tenant index, sorted by distance."""
    return [row[0].id for row in await session.execute(_EXACT, {"query": query})]


# The tenant's own index walked directly, in one round trip like ours (a function whose SET
# clauses apply the walk's settings): without the catalog lookup and the count search_documents()
# adds, so it is the floor ours is held to on the HNSW path. The tenant id is a literal, as
# search_documents() writes it: the partial index's predicate must be implied by the WHERE.
OWN_WALK_FUNCTION = """
CREATE OR REPLACE FUNCTION bench.own_walk(query vector, tenant uuid, k integer, ef integer)
RETURNS TABLE (id uuid, distance double precision)
LANGUAGE plpgsql VOLATILE ROWS 10
SET search_path = pg_catalog, public
SET enable_sort = off
SET hnsw.iterative_scan = relaxed_order
SET hnsw.ef_search = 100
AS $function$
BEGIN
    PERFORM set_config('hnsw.ef_search', ef::text, true);
    RETURN QUERY EXECUTE format($walk$
        SELECT d.id, d.embedding_vector <=> $1 AS distance
        FROM public.documents d
        WHERE d.tenant_id = %L AND d.embedding_vector IS NOT NULL AND d.deleted_at IS NULL
        ORDER BY d.embedding_vector <=> $1
        LIMIT $2
    $walk$, tenant) USING query, k;
END
$function$
"""


def install_own_walk(url: URL) -> None:
    """(Re)create bench.own_walk for app_runtime (cached databases get the current version)."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        conn.execute("SELECT '[0]'::vector")  # loads pgvector, whose hnsw.* settings it names
        conn.execute(OWN_WALK_FUNCTION)
        conn.execute("GRANT USAGE ON SCHEMA bench TO app_runtime")
        conn.execute("GRANT EXECUTE ON FUNCTION bench.own_walk TO app_runtime")


def own_index(ef_search: int) -> Strategy:
    """The tenant's own HNSW index, walked directly (iterative scan, re-sorted), one round trip."""
    walked = (
        select(literal_column("w.id").label("id"), literal_column("w.distance").label("distance"))
        .select_from(
            text("bench.own_walk(CAST(:query AS vector), CAST(:tenant AS uuid), :k, :ef) AS w")
        )
        .subquery()
    )
    statement = (
        select(Document, walked.c.distance)
        .join(walked, Document.id == walked.c.id)
        .order_by(walked.c.distance, Document.id)
        .options(defer(Document.embedding_vector, raiseload=True))
    )

    async def walk(session: AsyncSession, query: list[float], tenant: uuid.UUID) -> list[Any]:
        parameters = {
            "query": "[" + ",".join(map(repr, query)) + "]",
            "tenant": str(tenant),
            "k": K,
            "ef": ef_search,
        }
        return [row[0].id for row in await session.execute(statement, parameters)]

    return walk


async def ours(session: AsyncSession, query: list[float], tenant: uuid.UUID) -> list[Any]:
    """`Document.similarity_search`."""
    hits = await Document.similarity_search(session, query, K)
    return [hit.document.id for hit in hits]


OURS = "similarity_search"


def strategies(ef_values: list[int]) -> dict[str, Strategy]:
    """Exact, the own index at each ef_search, and ours."""
    named: dict[str, Strategy] = {"exact scan": exact_scan}
    for ef in ef_values:
        named[f"own HNSW ef={ef}"] = own_index(ef)
    named[OURS] = ours
    return named


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Probe:
    """One tenant on the size ladder, its queries and their exact answers."""

    tenant: int
    rows: int
    indexed: bool  # has an index the own-index strategies can walk
    ours_path: str  # "index" if search_documents() walks its own index, else "exact"
    size_class: str
    vectors: list[np.ndarray]
    truths: list[set[uuid.UUID]]


def size_class(rows: int, threshold: int, largest: int) -> str:
    """The tenant class a size belongs to, named by its place around the threshold."""
    if rows == largest:
        return "largest"
    if rows <= 30:
        return "tiny"
    if rows <= 0.8 * threshold:
        return "small"
    if rows <= threshold:
        return "just below"
    if rows <= 1.25 * threshold:
        return "just above"
    return "mid"


CLASSES = ("tiny", "small", "just below", "just above", "mid", "largest")


def ladder(corpus: Corpus, threshold: int) -> list[int]:
    """Tenants from 1 document to the largest: near fixed sizes and every probe size."""
    rows = corpus.searchable_rows
    targets = [1, 10, 30, 100, 300, 1000] + [threshold * share for share in PROBES]
    targets += [threshold * share for share in (5, 10, 20, 100, 400)] + [float(rows.max())]
    chosen: list[int] = []
    for target in targets:
        if target > rows.max():
            continue
        tenant = int(np.argmin(np.abs(rows - target) + (rows == 0) * 1e9))
        if tenant not in chosen:
            chosen.append(tenant)
    return sorted(chosen, key=lambda t: int(rows[t]))


def make_probes(
    corpus: Corpus,
    tenants: list[int],
    indexed: set[uuid.UUID],
    ours_indexed: set[uuid.UUID],
    args: argparse.Namespace,
) -> list[Probe]:
    """`args.queries` queries per tenant, from the corpus's own distribution, with answers."""
    rng = np.random.default_rng(args.seed + 2)
    shape = SHAPES[corpus.kind]
    largest = int(corpus.searchable_rows.max())
    probes = []
    for tenant in tenants:
        rows = corpus.searchable(tenant)
        vectors = sample_vectors(rng, shape, corpus.basis, corpus.centres, args.queries)
        truths = []
        own = corpus.vectors[rows].astype(np.float64)
        for vector in vectors:
            distances = 1.0 - own @ vector.astype(np.float64)
            order = np.lexsort(([corpus.ids[r].bytes for r in rows], distances))[:K]
            truths.append({corpus.ids[rows[i]] for i in order})
        count = len(rows)
        probes.append(
            Probe(
                tenant,
                count,
                corpus.tenant_ids[tenant] in indexed,
                "index" if corpus.tenant_ids[tenant] in ours_indexed else "exact",
                size_class(count, args.threshold, largest),
                list(vectors),
                truths,
            )
        )
    return probes


Cell = dict[str, list[float]]


async def measure(
    sessions: async_sessionmaker[AsyncSession],
    corpus: Corpus,
    probes: list[Probe],
    named: dict[str, Strategy],
    runs: int,
) -> dict[tuple[int, str], Cell]:
    """Every query of every probe with every strategy (shuffled), each in its own transaction.

    One warm-up pass, then `runs` measured passes: the strategies of a query run side by side,
    so machine noise hits them alike. The own-index strategies run only where there is one.
    """
    results: dict[tuple[int, str], Cell] = {}
    shuffler = random.Random(3)
    for run in range(runs + 1):
        for probe in probes:
            tenant_id = corpus.tenant_ids[probe.tenant]
            for vector, truth in zip(probe.vectors, probe.truths, strict=True):
                names = [n for n in named if probe.indexed or not n.startswith("own")]
                shuffler.shuffle(names)
                for name in names:
                    query = vector.tolist()
                    async with tenant_transaction(sessions, tenant_id) as session:
                        started = time.perf_counter()
                        found = await named[name](session, query, tenant_id)
                        elapsed = (time.perf_counter() - started) * 1000
                    if run == 0:
                        continue
                    cell = results.setdefault((probe.tenant, name), {"ms": [], "recall": []})
                    cell["ms"].append(elapsed)
                    cell["recall"].append(len(truth & set(found)) / len(truth) if truth else 1)
    return results


def percentile(values: list[float], share: float) -> float:
    """The `share` quantile (linear interpolation)."""
    return float(np.percentile(values, share * 100))


# --- reporting ----------------------------------------------------------------------------------


def summary(cell: Cell) -> tuple[float, float, float, float]:
    """Mean recall, minimum recall, p50 ms, p95 ms."""
    return (
        statistics.mean(cell["recall"]),
        min(cell["recall"]),
        percentile(cell["ms"], 0.5),
        percentile(cell["ms"], 0.95),
    )


def print_ladder(
    probes: list[Probe], results: dict[tuple[int, str], Cell], named: dict[str, Strategy]
) -> list[float]:
    """p95 against tenant size; returns ours/best per tenant."""
    others = [n for n in named if n != OURS]
    header = (
        f"{'rows':>7} {'class':<10} {'ours':<6} "
        + " ".join(f"{n:>17}" for n in others)
        + f" {'ours p95':>9} {'ours recall':>12} {'ours/best':>9}"
    )
    print("\np95 ms against tenant size (recall@10 min over queries in brackets where < 0.99)")
    print(header)
    print("-" * len(header))
    ratios = []
    for probe in probes:
        cells = {n: results[(probe.tenant, n)] for n in named if (probe.tenant, n) in results}
        stats = {n: summary(c) for n, c in cells.items()}
        correct = [n for n in others if n in stats and stats[n][1] >= 0.99]
        best = min(correct, key=lambda n: stats[n][3]) if correct else None
        columns = []
        for name in others:
            if name not in stats:
                columns.append(f"{'-':>17}")
                continue
            mark = "*" if name == best else " "
            flag = f" ({stats[name][1]:.2f})" if stats[name][1] < 0.99 else ""
            columns.append(f"{stats[name][3]:>9.2f}{mark}{flag:>7}")
        mean, low, _p50, p95 = stats[OURS]
        ratio = p95 / stats[best][3] if best else float("nan")
        ratios.append(ratio)
        print(
            f"{probe.rows:>7} {probe.size_class:<10} {probe.ours_path:<6} "
            + " ".join(columns)
            + f" {p95:>9.2f} {mean:>5.3f}/{low:>5.3f} {ratio:>8.2f}x"
        )
    print("* fastest correct strategy (min recall@10 >= 0.99); ours/best = ours p95 over its p95")
    return ratios


def print_classes(
    probes: list[Probe], results: dict[tuple[int, str], Cell], named: dict[str, Strategy]
) -> None:
    """Recall@10 mean and minimum over queries, and latency, per tenant class and strategy."""
    header = (
        f"{'class':<10} {'rows':>11} {'strategy':<18} {'recall mean':>11} {'recall min':>10}"
        f" {'p50 ms':>8} {'p95 ms':>8}"
    )
    print("\nRecall@10 per tenant class (mean and minimum over every query of the class)")
    print(header)
    print("-" * len(header))
    for size_class_name in CLASSES:
        members = [p for p in probes if p.size_class == size_class_name]
        if not members:
            continue
        low, high = min(p.rows for p in members), max(p.rows for p in members)
        span = f"{low}-{high}" if low != high else str(low)
        for name in named:
            cells = [results[(p.tenant, name)] for p in members if (p.tenant, name) in results]
            if not cells:
                continue
            merged = {
                "ms": [v for c in cells for v in c["ms"]],
                "recall": [v for c in cells for v in c["recall"]],
            }
            mean, minimum, p50, p95 = summary(merged)
            print(
                f"{size_class_name:<10} {span:>11} {name:<18} {mean:>11.3f} {minimum:>10.3f}"
                f" {p50:>8.2f} {p95:>8.2f}"
            )


def print_builds(build: dict[str, Any], inserts: dict[str, float]) -> None:
    """Per-tenant index builds (time, size, probe), and the cost of an insert."""
    print(
        f"\nPer-tenant HNSW indexes: {len(build['indexes'])} by the maintenance command (build,"
        f" then its recall probe: seconds are both), {len(build['alternatives'])} more for"
        " comparison under the threshold (build only); one at a time"
    )
    rows = [(i, "ours") for i in build["indexes"]] + [(i, "compare") for i in build["alternatives"]]
    if rows:
        print(f"{'rows':>7} {'index':<8} {'build s':>8} {'MiB':>7} {'KiB/row':>8} {'probe min':>9}")
        for index, kind in sorted(rows, key=lambda r: r[0]["rows"]):
            probe = index.get("probe_recall")
            verdict = "" if index.get("kept", True) else " dropped: exact-only"
            per_row = index["bytes"] / 1024 / max(1, index["rows"])
            print(
                f"{index['rows']:>7} {kind:<8} {index['seconds']:>8.1f}"
                f" {index['bytes'] / 2**20:>7.1f} {per_row:>8.2f}"
                f" {'-' if probe is None else f'{probe:.2f}':>9}{verdict}"
            )
        ours = build["indexes"]
        total_rows = sum(i["rows"] for i in ours)
        total_seconds = sum(i["seconds"] for i in ours)
        total_bytes = sum(i["bytes"] for i in ours)
        print(
            f"ours in all: {len(ours)} indexes, {total_rows} rows, {total_seconds:.1f} s,"
            f" {total_bytes / 2**20:.1f} MiB"
            + (f" ({total_seconds * 1000 / total_rows:.2f} ms per row)" if total_rows else "")
        )
    print(
        f"Planning a documents listing: {build['planning_ms_before']:.3f} ms before the"
        f" per-tenant indexes, {build['planning_ms_after']:.3f} ms with them (median)"
    )
    print("\nOne INSERT of an embedded document (median ms of 100, each rolled back, as the owner)")
    for name, ms in inserts.items():
        print(f"  {name:<58} {ms:>7.2f}")


# --- the alternatives: list partitions, and the old shared index ---------------------------------


def compare_partitions(
    url: URL,
    corpus: Corpus,
    probes: list[Probe],
    builds: list[dict[str, Any]],
    ef_search: int,
    runs: int,
) -> None:
    """List partitions per large tenant vs partial indexes: build, size, p95, recall.

    A copy of the searchable rows (id, tenant, vector) goes into a table partitioned by
    tenant: one partition with its own HNSW index per indexed tenant, a default partition for
    the rest. Both shapes are queried the same way, as the owner (no RLS on the copy), side by
    side.
    """
    owned = {i["tenant"] for i in builds}
    indexed = [p for p in probes if str(corpus.tenant_ids[p.tenant]) in owned]
    if not indexed:
        return
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        register_vector(conn)
        conn.execute("DROP TABLE IF EXISTS bench.by_tenant")
        conn.execute(
            "CREATE TABLE bench.by_tenant (id uuid, tenant_id uuid,"
            " embedding_vector vector(1024)) PARTITION BY LIST (tenant_id)"
        )
        conn.execute("CREATE TABLE bench.by_tenant_rest PARTITION OF bench.by_tenant DEFAULT")
        partition_builds = []
        for probe in indexed:
            tenant = corpus.tenant_ids[probe.tenant]
            part = f"bench.by_tenant_{tenant.hex}"
            conn.execute(
                f"CREATE TABLE {part} PARTITION OF bench.by_tenant FOR VALUES IN ('{tenant}')"
            )
            conn.execute(
                f"INSERT INTO {part} SELECT id, tenant_id, embedding_vector FROM documents"
                " WHERE tenant_id = %s AND embedding_vector IS NOT NULL AND deleted_at IS NULL",
                (tenant,),
            )
            conn.execute("SET maintenance_work_mem = '512MB'")
            conn.execute("SET max_parallel_maintenance_workers = 0")
            started = time.perf_counter()
            conn.execute(
                f"CREATE INDEX ON {part} USING hnsw (embedding_vector vector_cosine_ops)"
                f" WITH (m = {vector_indexes_service.HNSW_M},"
                f" ef_construction = {vector_indexes_service.HNSW_EF_CONSTRUCTION})"
            )
            seconds = time.perf_counter() - started
            size = conn.execute(
                "SELECT sum(pg_relation_size(indexrelid)) FROM pg_index"
                " WHERE indrelid = %s::regclass",
                (part,),
            ).fetchone()
            partition_builds.append((probe, seconds, int(size[0]) if size else 0))
        conn.execute(
            "INSERT INTO bench.by_tenant_rest SELECT id, tenant_id, embedding_vector"
            " FROM documents WHERE embedding_vector IS NOT NULL AND deleted_at IS NULL"
            " AND tenant_id <> ALL(%s)",
            ([corpus.tenant_ids[p.tenant] for p in indexed],),
        )
        conn.execute("ANALYZE bench.by_tenant")
        conn.execute("SET enable_sort = off")
        conn.execute("SET hnsw.iterative_scan = relaxed_order")
        conn.execute(f"SET hnsw.ef_search = {ef_search}")
        shapes = {
            "partial index": "SELECT id FROM documents WHERE tenant_id = '{t}'"
            " AND embedding_vector IS NOT NULL AND deleted_at IS NULL"
            " ORDER BY embedding_vector <=> %s LIMIT 10",
            "list partition": "SELECT id FROM bench.by_tenant WHERE tenant_id = '{t}'"
            " ORDER BY embedding_vector <=> %s LIMIT 10",
        }
        print(f"\nPartial index per tenant vs list partition per tenant (ef_search {ef_search})")
        header = (
            f"{'rows':>7} {'shape':<15} {'build s':>8} {'MiB':>7} {'recall mean':>11}"
            f" {'recall min':>10} {'p50 ms':>8} {'p95 ms':>8}"
        )
        print(header)
        print("-" * len(header))
        index_build = {i["tenant"]: (i["seconds"], i["bytes"]) for i in builds}
        for probe, part_seconds, part_bytes in partition_builds:
            tenant = corpus.tenant_ids[probe.tenant]
            timings: dict[str, list[float]] = {name: [] for name in shapes}
            recalls: dict[str, list[float]] = {name: [] for name in shapes}
            for run in range(runs + 1):
                for vector, truth in zip(probe.vectors, probe.truths, strict=True):
                    for name in random.sample(list(shapes), len(shapes)):
                        started = time.perf_counter()
                        rows = conn.execute(shapes[name].format(t=tenant), (vector,)).fetchall()
                        elapsed = (time.perf_counter() - started) * 1000
                        if run:
                            timings[name].append(elapsed)
                            recalls[name].append(len(truth & {r[0] for r in rows}) / len(truth))
            for name in shapes:
                seconds, size = (
                    (part_seconds, part_bytes)
                    if name == "list partition"
                    else index_build.get(str(tenant), (float("nan"), 0))
                )
                print(
                    f"{probe.rows:>7} {name:<15} {seconds:>8.1f} {size / 2**20:>7.1f}"
                    f" {statistics.mean(recalls[name]):>11.3f} {min(recalls[name]):>10.3f}"
                    f" {percentile(timings[name], 0.5):>8.2f}"
                    f" {percentile(timings[name], 0.95):>8.2f}"
                )
        conn.execute("DROP TABLE bench.by_tenant")


def shared_index_costs(
    url: URL, corpus: Corpus, tenants: dict[str, uuid.UUID], rng: np.random.Generator
) -> dict[str, float]:
    """Build the old shared HNSW index (timed), measure inserts with it, drop it again."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '2GB'")
        conn.execute("SET max_parallel_maintenance_workers = 0")
        started = time.perf_counter()
        conn.execute(
            "CREATE INDEX bench_shared_hnsw ON documents USING hnsw"
            " (embedding_vector vector_cosine_ops) WITH (m = 16, ef_construction = 128)"
            " WHERE embedding_vector IS NOT NULL AND deleted_at IS NULL"
        )
        seconds = time.perf_counter() - started
        size = conn.execute("SELECT pg_relation_size('bench_shared_hnsw')").fetchone()
    print(
        f"\nShared HNSW index (the old design) over all {corpus.kind} documents:"
        f" build {seconds:.1f} s, {(size[0] if size else 0) / 2**20:.0f} MiB"
    )
    costs = {
        f"{name}, with the shared index too": insert_cost_ms(url, tenant, 100, rng)
        for name, tenant in tenants.items()
    }
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("DROP INDEX bench_shared_hnsw")
    return costs


# --- the run ------------------------------------------------------------------------------------


async def run_corpus(kind: str, args: argparse.Namespace) -> None:
    """Build, measure and print one corpus."""
    corpus = build_corpus(kind, args)
    tenants = ladder(corpus, args.threshold)
    below = [
        corpus.tenant_ids[t]
        for t in tenants
        if args.alternatives_from <= corpus.searchable_rows[t] <= args.threshold
    ]
    url, build = await prepare_database(
        args, corpus, below, [corpus.tenant_ids[t] for t in tenants]
    )
    ours_indexed = {uuid.UUID(i["tenant"]) for i in build["indexes"] if i.get("kept", True)}
    indexed = ours_indexed | {uuid.UUID(i["tenant"]) for i in build["alternatives"]}
    probes = make_probes(corpus, tenants, indexed, ours_indexed, args)
    install_own_walk(url)
    named = strategies(args.ef)
    settings = bench_settings(url)
    load_before = os.getloadavg()
    engine = build_runtime_engine(targets_for(url, RUNTIME_PASSWORD), settings)
    try:
        sessions = make_sessionmaker(engine)
        async with sessions() as session:
            role = (await session.execute(select(text("current_user")))).scalar()
        assert role == "app_runtime", f"queries must run as app_runtime, not {role}"
        results = await measure(sessions, corpus, probes, named, args.runs)
    finally:
        await engine.dispose()
    load_after = os.getloadavg()
    searchable = int(corpus.searchable_rows.sum())
    cached = " (cached database: build numbers from its first run)" if build["cached"] else ""
    print(
        f"\n=== {kind} corpus: {len(corpus.ids)} documents ({searchable} active and embedded),"
        f" {len(corpus.tenant_ids)} tenants, threshold {args.threshold} rows, ours ef_search"
        f" {vector_search_service.HNSW_EF_SEARCH}, {args.queries} queries per tenant x"
        f" {args.runs} runs, k={K}{cached}"
    )
    print(
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after the queries;"
        f" table with TOAST {build['table_bytes'] / 2**20:.0f} MiB, COPY {build['load_seconds']} s"
    )
    ratios = print_ladder(probes, results, named)
    print_classes(probes, results, named)
    rng = np.random.default_rng(args.seed + 3)
    largest = corpus.tenant_ids[int(np.argmax(corpus.searchable_rows))]
    small = corpus.tenant_ids[probes[0].tenant]
    above = next((p for p in probes if p.ours_path == "index"), None)
    sample = {"small tenant (no index of its own)": small}
    if above is not None:
        sample[f"{above.rows}-row tenant (own index)"] = corpus.tenant_ids[above.tenant]
    sample[f"largest tenant, {int(corpus.searchable_rows.max())} rows (own index)"] = largest
    inserts = {name: insert_cost_ms(url, tenant, 100, rng) for name, tenant in sample.items()}
    if args.shared_index:
        inserts.update(shared_index_costs(url, corpus, sample, rng))
    print_builds(build, inserts)
    if args.partitions:
        compare_partitions(
            url, corpus, probes, build["indexes"], vector_search_service.HNSW_EF_SEARCH, args.runs
        )
    worst = max((r for r in ratios if r == r), default=float("nan"))
    print(f"\nworst ours/best over the ladder: {worst:.2f}x")
    if not args.keep_database:
        drop_database(url)


def drop_database(url: URL) -> None:
    """Drop the bench database from a server that isn't the bench's own."""
    with psycopg.connect(libpq(url.set(database="postgres")), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(url.database))
        )


def main() -> None:
    """Parse the flags and run each corpus."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--corpus", choices=[*SHAPES, "both"], default="both")
    parser.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD)
    parser.add_argument("--queries", type=int, default=20, help="queries per ladder tenant")
    parser.add_argument("--runs", type=int, default=3, help="measured passes (after a warm-up)")
    parser.add_argument(
        "--ef",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[40, vector_search_service.HNSW_EF_SEARCH],
        help="ef_search values to walk the own index with (comma-separated)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--alternatives-from",
        type=int,
        help="also index ladder tenants under the threshold from this size, for comparison"
        " (default: 0.4 x the threshold)",
    )
    parser.add_argument(
        "--server-dir",
        type=Path,
        default=CACHE_DIR / "postgres-vector",
        help="the bench's embedded server (another one lets two sizes run side by side)",
    )
    parser.add_argument(
        "--index-only-ladder",
        action="store_true",
        help="build only the queried tenants' own indexes (a reduced build for 1M documents)",
    )
    parser.add_argument(
        "--maintenance-work-mem",
        default=vector_indexes_service.DEFAULT_MAINTENANCE_WORK_MEM,
        help="maintenance_work_mem of the builds (the largest tenant's graph should fit)",
    )
    parser.add_argument("--partitions", action="store_true", help="compare list partitions")
    parser.add_argument("--shared-index", action="store_true", help="cost of the old index")
    parser.add_argument("--server-url", help="superuser URL of a PostgreSQL with pgvector")
    parser.add_argument("--rebuild", action="store_true", help="ignore a cached database")
    parser.add_argument("--keep", action="store_true", help="keep the database on a server URL")
    args = parser.parse_args()
    args.ef = sorted(set(args.ef))
    if args.alternatives_from is None:
        args.alternatives_from = round(0.4 * args.threshold)
    for kind in SHAPES if args.corpus == "both" else [args.corpus]:
        asyncio.run(run_corpus(kind, args))


if __name__ == "__main__":
    main()
