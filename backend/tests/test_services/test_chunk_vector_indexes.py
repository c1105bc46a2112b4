"""Chunks get the documents' guarantee: a tenant above the threshold searches its own HNSW
index over its chunks (recall@10 >= 0.99 against the exact answer, on clustered data), a small
tenant is scanned exactly, and neither reads the other's structures."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import psycopg
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database import vector_search
from app.database.session import admin_transaction, tenant_transaction
from app.database.vector_search import SearchFilters
from app.models import DocumentChunk, User
from app.services import vector_indexes as vector_indexes_service
from app.services.documents import SEARCH_CHUNKS
from app.services.vector_indexes import CHUNKS, Action
from testkit import database_harness as harness
from testkit.factories import make_document, make_tenant, make_user
from tests.conftest import MigratedDatabase

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
    assert set(chunk_builds) >= {big}, [r for r in results if r.plan.tenant_id == big]
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


async def test_chunk_search_takes_the_document_filters_on_both_paths(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    maintain_vector_indexes: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chunk passes the filters when its document does: on the exact scan and on the walk of
    the tenant's own chunk index (issue 19: text search takes the embedding search's filters)."""
    monkeypatch.setattr(vector_search, "HNSW_MIN_SHARE", 0.0)
    vectors = clustered(THRESHOLD + 200)
    tenant, ids = await tenant_with_chunks(admin_sessions, vectors)
    async with admin_transaction(admin_sessions) as session:
        user = (await session.execute(select(User).where(User.tenant_id == tenant))).scalar_one()
        cardiology = await make_document(
            session, user, metadata_={"ward": "cardiology"}, content_type="text/plain"
        )
        # Every third chunk moves to the cardiology document.
        moved = ids[::3]
        await session.execute(
            update(DocumentChunk)
            .where(DocumentChunk.tenant_id == tenant, DocumentChunk.id.in_(moved))
            .values(document_id=cardiology.id, ordinal=DocumentChunk.ordinal + 100_000)
        )
    query = vectors[0]
    cases = [
        (SearchFilters(metadata_contains={"ward": "cardiology"}), set(moved)),
        (SearchFilters(content_type="text/plain"), set(moved)),
        (SearchFilters(content_type="application/pdf"), set(ids) - set(moved)),
        (SearchFilters(metadata_contains={"ward": "nowhere"}), set()),
    ]

    async def filtered(filters: SearchFilters) -> tuple[list[uuid.UUID], set[str]]:
        parameters = vector_search.search_parameters([float(x) for x in query], 10, filters)
        async with tenant_transaction(runtime_sessions, tenant) as session:
            rows = (
                await session.execute(
                    text(CHUNKS.search_sql.replace("SELECT id, strategy", "SELECT *")).bindparams(
                        vector_search.METADATA_FILTER
                    ),
                    parameters,
                )
            ).all()
        return [row.id for row in rows], {row.strategy for row in rows}

    for path in ("exact", "hnsw"):
        if path == "hnsw":
            await maintain_vector_indexes(THRESHOLD)
        for filters, allowed in cases:
            found, strategies = await filtered(filters)
            scored = sorted(zip((1.0 - vectors @ query).tolist(), ids, strict=True))
            truth = [chunk for _, chunk in scored if chunk in allowed][:10]
            assert set(found) <= allowed, (path, filters)
            assert len(found) == len(truth), (path, filters)
            # Exact: the true top 10 among the allowed chunks (as a set: float ties may order
            # differently); the walk: what the filters allow, nearly all of it the true top 10.
            overlap = len(set(found) & set(truth))
            assert overlap == len(truth) if path == "exact" else overlap >= len(truth) - 1
            if allowed:
                assert strategies == {path}, (path, filters)


async def test_a_small_tenants_chunk_search_is_planned_once_through_the_tenant_index(
    admin_sessions: async_sessionmaker[AsyncSession],
    migrated_db: MigratedDatabase,
) -> None:
    """search_document_chunks() is the same template as search_documents(): generic plans, so
    its exact scan reads the tenant's chunks through idx_document_chunks_tenant_searchable with
    the tenant id as a parameter (planned once per session), never a seq scan."""
    small, _ = await tenant_with_chunks(admin_sessions, clustered(5))
    bulk, _ = await tenant_with_chunks(admin_sessions, clustered(1))
    query = "[" + ",".join(map(repr, clustered(1)[0].tolist())) + "]"
    plans: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        harness.libpq(migrated_db.superuser_url), autocommit=True
    ) as conn:
        await conn.execute(
            "INSERT INTO document_chunks (tenant_id, document_id, ordinal, start_char, end_char,"
            " text_ciphertext, embedding, embedding_provider, embedding_model,"
            " embedding_dimensions) SELECT tenant_id, document_id, ordinal + n, start_char,"
            " end_char, text_ciphertext, embedding, embedding_provider, embedding_model,"
            " embedding_dimensions FROM document_chunks, generate_series(1, 3000) AS n"
            " WHERE tenant_id = %s",
            (bulk,),
        )
        await conn.execute("ANALYZE document_chunks")
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        await conn.execute("LOAD 'auto_explain'")
        await conn.execute(
            "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements"
            " = on; SET auto_explain.log_level = notice; SET role = app_runtime"
        )
        for _ in range(7):  # past PostgreSQL's 5 custom plans, were the mode left on auto
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('app.current_tenant_id', %s, true)", (str(small),)
                )
                rows = await conn.execute(
                    "SELECT strategy FROM search_document_chunks(%s::vector, 10, NULL, NULL,"
                    " NULL, 100, 0.05, NULL, 20000)",
                    (query,),
                )
                assert {row[0] for row in await rows.fetchall()} == {"exact"}
        await conn.execute("RESET role")
        await conn.execute(
            "UPDATE document_chunks SET deleted_at = now() WHERE tenant_id = %s", (bulk,)
        )
    scans = [plan for plan in plans if "<=>" in plan and "OFFSET 0" in plan]
    assert len(scans) == 7, plans
    for plan in scans:
        assert "idx_document_chunks_tenant_searchable" in plan
        assert "Seq Scan" not in plan
        assert "(tenant_id = $" in plan  # a generic plan: the tenant id is a parameter
