"""Chunk search recall against exact ground truth, with far more chunks than documents (issue 19).

Part of `make bench-vector` (`--chunks-per-doc N`): the question is the vector search's, not the
pipeline's (extracting and embedding real text would make 5-10 chunks per document of 200k
documents a day's work on this machine), so the chunks are synthetic, like the documents: each
searchable document of the ladder tenants gets N chunks around its own vector (a document's
passages sit near each other and near their cluster), COPYed in as the owner. Then the
maintenance command builds and probes the tenants' own chunk indexes as it does in production
(`run_maintenance`), and each ladder tenant is searched with queries from the corpus's own
distribution through `search_document_chunks()` exactly as text search calls it (the app's
statement, as app_runtime in a tenant transaction), beside an exact scan of the tenant's chunks.
Recall@10 is measured against the exact top 10 by (distance, id) computed here in numpy.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database import vector_search as vector_search_service
from app.database.session import tenant_transaction
from app.services import documents as documents_service
from app.services import vector_indexes as vector_indexes_service

K = 10
# A document's chunks spread around it by this share of the corpus's cluster spread.
CHUNK_SPREAD = 0.5

_EXACT_CHUNKS = text(
    "SELECT id FROM (SELECT c.id, c.embedding <=> CAST(:query AS vector) AS distance"
    " FROM document_chunks c WHERE c.tenant_id = :tenant AND c.deleted_at IS NULL OFFSET 0)"
    " AS scored ORDER BY distance, id LIMIT :k"
)


@dataclass
class ChunkTenant:
    """One ladder tenant's chunks: ids and vectors (row i of each is chunk i)."""

    tenant_id: uuid.UUID
    documents: int
    ids: list[uuid.UUID]
    vectors: np.ndarray


def chunk_vectors(
    rng: np.random.Generator,
    document: np.ndarray,
    count: int,
    basis: np.ndarray,
    spread: float,
    noise: float,
) -> np.ndarray:
    """`count` unit vectors around one document's vector, in the corpus's latent subspace."""
    latent = rng.standard_normal((count, basis.shape[1])) * spread * CHUNK_SPREAD
    vectors = document + (latent / np.sqrt(basis.shape[1])).astype(np.float32) @ basis.T
    vectors += rng.standard_normal(vectors.shape, dtype=np.float32) * noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def load_chunks(
    dsn: str,
    tenants: list[tuple[uuid.UUID, list[uuid.UUID], np.ndarray]],
    per_document: int,
    basis: np.ndarray,
    spread: float,
    noise: float,
    seed: int,
) -> tuple[list[ChunkTenant], float]:
    """COPY `per_document` chunks per searchable document of each tenant (as the owner); the
    tenants' chunks and the load's seconds. Chunk text is a placeholder: only vectors matter."""
    rng = np.random.default_rng(seed)
    id_rng = random.Random(seed)
    loaded = []
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        register_vector(conn)
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY document_chunks (id, tenant_id, document_id, ordinal, start_char, end_char,"
                " text_ciphertext, embedding, embedding_provider, embedding_model,"
                " embedding_dimensions) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(
                [
                    *("uuid", "uuid", "uuid", "int4", "int4", "int4"),
                    *("bytea", "vector", "text", "text", "int4"),
                ]
            )
            for tenant_id, document_ids, document_vectors in tenants:
                ids: list[uuid.UUID] = []
                vectors = []
                for document_id, document in zip(document_ids, document_vectors, strict=True):
                    chunks = chunk_vectors(rng, document, per_document, basis, spread, noise)
                    for ordinal, vector in enumerate(chunks):
                        chunk_id = uuid.UUID(int=id_rng.getrandbits(128), version=4)
                        copy.write_row(
                            (
                                chunk_id,
                                tenant_id,
                                document_id,
                                ordinal,
                                ordinal * 1000,
                                ordinal * 1000 + 1200,
                                b"bench",
                                vector,
                                "bench",
                                "synthetic",
                                vector.shape[0],
                            )
                        )
                        ids.append(chunk_id)
                    vectors.append(chunks)
                stacked = np.concatenate(vectors) if vectors else np.empty((0, basis.shape[0]))
                loaded.append(ChunkTenant(tenant_id, len(document_ids), ids, stacked))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE document_chunks")
    return loaded, time.perf_counter() - started


def exact_top(tenant: ChunkTenant, query: np.ndarray) -> set[uuid.UUID]:
    """The tenant's true top K chunks by (cosine distance, id)."""
    distances = 1.0 - tenant.vectors.astype(np.float64) @ query.astype(np.float64)
    order = np.lexsort(([chunk.bytes for chunk in tenant.ids], distances))[:K]
    return {tenant.ids[i] for i in order}


async def ours(session: AsyncSession, query: list[float]) -> tuple[list[Any], str]:
    """search_document_chunks() as text search calls it (the app's statement)."""
    parameters = vector_search_service.search_parameters(query, K, None)
    rows = (await session.execute(documents_service.SEARCH_CHUNKS, parameters)).all()
    strategy = (
        await session.execute(
            text(
                vector_indexes_service.CHUNKS.search_sql.replace(
                    "SELECT id, strategy", "SELECT DISTINCT strategy"
                )
            ).bindparams(vector_search_service.METADATA_FILTER),
            parameters,
        )
    ).scalar()
    return [row[0] for row in rows], str(strategy)


async def exact(session: AsyncSession, query: list[float], tenant: uuid.UUID) -> list[Any]:
    """The tenant's chunks scanned exactly."""
    literal = "[" + ",".join(map(repr, query)) + "]"
    rows = await session.execute(_EXACT_CHUNKS, {"query": literal, "tenant": tenant, "k": K})
    return list(rows.scalars())


@dataclass
class ChunkCell:
    """One tenant's measurements."""

    ours_ms: list[float]
    exact_ms: list[float]
    recall: list[float]
    strategies: set[str]


async def measure(
    sessions: async_sessionmaker[AsyncSession],
    tenants: list[ChunkTenant],
    queries: dict[uuid.UUID, np.ndarray],
    runs: int,
) -> dict[uuid.UUID, ChunkCell]:
    """Each query with ours and the exact scan side by side (alternating), after a warm-up."""
    cells = {}
    for tenant in tenants:
        cell = ChunkCell([], [], [], set())
        for run in range(runs + 1):
            for number, vector in enumerate(queries[tenant.tenant_id]):
                query = vector.tolist()
                order = ("ours", "exact") if (number + run) % 2 else ("exact", "ours")
                for name in order:
                    async with tenant_transaction(sessions, tenant.tenant_id) as session:
                        started = time.perf_counter()
                        if name == "ours":
                            found, strategy = await ours(session, query)
                        else:
                            await exact(session, query, tenant.tenant_id)
                        elapsed = (time.perf_counter() - started) * 1000
                    if run == 0:
                        continue
                    if name == "ours":
                        truth = exact_top(tenant, vector)
                        cell.ours_ms.append(elapsed)
                        cell.recall.append(len(truth & set(found)) / len(truth) if truth else 1.0)
                        cell.strategies.add(strategy)
                    else:
                        cell.exact_ms.append(elapsed)
        cells[tenant.tenant_id] = cell
    return cells


def print_chunk_table(
    tenants: list[ChunkTenant],
    cells: dict[uuid.UUID, ChunkCell],
    classify: Callable[[int], str],
    builds: dict[uuid.UUID, dict[str, Any]],
    per_document: int,
    load: tuple[float, float],
) -> None:
    """Per ladder tenant and per class: chunks, path, p95 ours vs exact, recall mean/min."""

    def p95(values: list[float]) -> float:
        return float(np.percentile(values, 95)) if values else float("nan")

    print(
        f"\nChunk search (search_document_chunks, as text search calls it), {per_document}"
        f" chunks per document, k={K}; load average {load[0]:.2f} before, {load[1]:.2f} after"
    )
    header = (
        f"{'docs':>6} {'chunks':>7} {'class':<10} {'path':<10} {'build s':>8} {'exact p95':>10}"
        f" {'ours p95':>9} {'ours/exact':>10} {'recall mean':>11} {'recall min':>10}"
    )
    print(header)
    print("-" * len(header))
    by_class: dict[str, list[ChunkTenant]] = {}
    for tenant in sorted(tenants, key=lambda t: len(t.ids)):
        cell = cells[tenant.tenant_id]
        build = builds.get(tenant.tenant_id)
        size_class = classify(len(tenant.ids))
        by_class.setdefault(size_class, []).append(tenant)
        path = "/".join(sorted(cell.strategies))
        if build is not None and build.get("ef_search"):
            path += f" ef {build['ef_search']}"
        print(
            f"{tenant.documents:>6} {len(tenant.ids):>7} {size_class:<10} {path:<10}"
            f" {build['seconds'] if build else '-':>8} {p95(cell.exact_ms):>10.2f}"
            f" {p95(cell.ours_ms):>9.2f} {p95(cell.ours_ms) / p95(cell.exact_ms):>9.2f}x"
            f" {statistics.mean(cell.recall):>11.3f} {min(cell.recall):>10.3f}"
        )
    print("\nChunk recall@10 per tenant class (mean and minimum over every query of the class)")
    print(f"{'class':<10} {'chunks':>13} {'recall mean':>11} {'recall min':>10} {'ours p95':>9}")
    for size_class, members in by_class.items():
        recall = [r for t in members for r in cells[t.tenant_id].recall]
        ms = [v for t in members for v in cells[t.tenant_id].ours_ms]
        sizes = [len(t.ids) for t in members]
        span = f"{min(sizes)}-{max(sizes)}" if min(sizes) != max(sizes) else str(sizes[0])
        print(
            f"{size_class:<10} {span:>13} {statistics.mean(recall):>11.3f} {min(recall):>10.3f}"
            f" {p95(ms):>9.2f}"
        )


def read_chunks(dsn: str, tenant_ids: list[uuid.UUID]) -> list[ChunkTenant]:
    """The tenants' searchable chunks as stored (ids and vectors), for the ground truth."""
    tenants = []
    with psycopg.connect(dsn) as conn:
        register_vector(conn)
        for tenant_id in tenant_ids:
            rows = conn.execute(
                "SELECT id, document_id, embedding FROM document_chunks"
                " WHERE tenant_id = %s AND deleted_at IS NULL",
                (tenant_id,),
            ).fetchall()
            if not rows:
                continue
            tenants.append(
                ChunkTenant(
                    tenant_id,
                    len({row[1] for row in rows}),
                    [row[0] for row in rows],
                    np.array([np.asarray(row[2].to_numpy()) for row in rows], dtype=np.float32),
                )
            )
    return tenants
