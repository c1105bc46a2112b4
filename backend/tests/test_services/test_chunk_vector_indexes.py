"""Chunks get the documents' guarantee: a tenant above the threshold searches its own HNSW
index over its chunks (recall@10 >= 0.99 against the exact answer, on clustered data), a small
tenant is scanned exactly, and neither reads the other's structures."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database import vector_search
from app.database.session import admin_transaction, tenant_transaction
from app.models import DocumentChunk
from app.services import vector_indexes as vector_indexes_service
from app.services.documents import SEARCH_CHUNKS
from app.services.vector_indexes import CHUNKS, Action
from testkit.factories import make_document, make_tenant, make_user

THRESHOLD = 400  # VECTOR_INDEX_MIN_ROWS's floor
RNG = np.random.default_rng(19)


def clustered(count: int) -> np.ndarray:
    """Unit vectors in a few tight clusters (notes of one clinic sit close together)."""
    centres = RNG.standard_normal((4, 1024))
    vectors = centres[RNG.integers(0, 4, count)] + 0.35 * RNG.standard_normal((count, 1024))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def tenant_with_chunks(
    admin_sessions: async_sessionmaker[AsyncSession], vectors: np.ndarray
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A tenant with one document whose chunks carry `vectors` (text bytes are placeholders)."""
    ids = []
    async with admin_transaction(admin_sessions) as session:
        tenant = await make_tenant(session)
        user = await make_user(session, tenant)
        document = await make_document(session, user)
        for ordinal, vector in enumerate(vectors):
            chunk = DocumentChunk(
                tenant_id=tenant.id,
                document_id=document.id,
                ordinal=ordinal,
                start_char=0,
                end_char=1,
                text_ciphertext=b"sealed",
                embedding=[float(x) for x in vector],
                embedding_provider="local",
                embedding_model="test",
                embedding_dimensions=1024,
            )
            session.add(chunk)
            await session.flush()
            ids.append(chunk.id)
    return tenant.id, ids


async def search_chunks(
    runtime_sessions: async_sessionmaker[AsyncSession], tenant: uuid.UUID, query: np.ndarray
) -> tuple[list[uuid.UUID], set[str]]:
    parameters = vector_search.search_parameters([float(x) for x in query], 10, None)
    async with tenant_transaction(runtime_sessions, tenant) as session:
        hits = (await session.execute(SEARCH_CHUNKS, parameters)).all()
        strategies = set(
            (
                await session.execute(
                    text(CHUNKS.search_sql.replace("SELECT id, strategy", "SELECT strategy")),
                    parameters,
                )
            ).scalars()
        )
    return [row[0] for row in hits], strategies


async def test_large_tenants_walk_their_own_chunk_index_with_full_recall(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    maintain_vector_indexes: Any,
) -> None:
    big_vectors = clustered(THRESHOLD + 200)
    big, big_ids = await tenant_with_chunks(admin_sessions, big_vectors)
    small, _ = await tenant_with_chunks(admin_sessions, clustered(30))
    results = await maintain_vector_indexes(THRESHOLD)
    chunk_builds = {
        r.plan.tenant_id: r
        for r in results
        if r.plan.table is CHUNKS and r.plan.action is Action.BUILD
    }
    assert set(chunk_builds) >= {big}
    assert small not in chunk_builds
    assert (chunk_builds[big].probe_recall or 0) >= 0.99
    assert chunk_builds[big].plan.index_name == vector_indexes_service.index_name(big, CHUNKS)

    worst = 1.0
    for row in RNG.integers(0, len(big_vectors), 20):
        query = big_vectors[row] + 0.05 * RNG.standard_normal(1024)
        query /= np.linalg.norm(query)
        found, strategies = await search_chunks(runtime_sessions, big, query)
        scored = sorted(zip((1.0 - big_vectors @ query).tolist(), big_ids, strict=True))
        truth = {chunk_id for _, chunk_id in scored[:10]}
        worst = min(worst, len(truth & set(found)) / 10)
        assert strategies == {"hnsw"}
    assert worst >= 0.99
    _, small_strategies = await search_chunks(runtime_sessions, small, clustered(1)[0])
    assert small_strategies == {"exact"}
