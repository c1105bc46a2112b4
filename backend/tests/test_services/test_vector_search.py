"""Document.similarity_search: the current tenant's exact nearest documents, on both paths.

A small corpus: a big tenant (BIG_DOCS) and a tiny one (TINY_DOCS), with soft-deleted and
not-yet-embedded documents and a neighbour tenant holding copies of the tiny tenant's vectors.
The big tenant gets an HNSW index of its own (the maintenance command's work, with a low
threshold) and the exact-scan floor is lowered for the tests that need the HNSW path, so it
takes that path without thousands of rows.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.database import vector_search as vector_search_service
from app.database.session import admin_transaction, tenant_transaction
from app.database.vector_search import SearchFilters
from app.models import Document
from testkit.factories import make_tenant, make_user

BIG_DOCS = 240
TINY_DOCS = 6
HNSW_FLOOR = 50  # exact-scan floor for the HNSW-path tests: the big tenant is above it
RNG = np.random.default_rng(20251016)


def unit_vector() -> list[float]:
    """A random direction in 1024 dimensions."""
    vector = RNG.standard_normal(1024)
    return [float(x) for x in vector / np.linalg.norm(vector)]


@dataclass
class Corpus:
    """The documents each tenant has, as (id, vector, searchable?, status, type, metadata)."""

    big: uuid.UUID
    tiny: uuid.UUID
    neighbour: uuid.UUID
    rows: dict[uuid.UUID, list[dict[str, Any]]]

    def searchable(self, tenant: uuid.UUID) -> list[dict[str, Any]]:
        """The tenant's active, embedded documents."""
        return [
            row
            for row in self.rows[tenant]
            if row["deleted_at"] is None and row["embedding_vector"] is not None
        ]

    def exact(
        self, tenant: uuid.UUID, query: list[float], k: int, keep: Any = None
    ) -> list[uuid.UUID]:
        """The exact top k ids by (cosine distance, id), computed in NumPy."""
        rows = [row for row in self.searchable(tenant) if keep is None or keep(row)]
        q = np.asarray(query)
        scored = sorted(
            (1.0 - float(np.dot(row["embedding_vector"], q)), row["id"]) for row in rows
        )
        return [doc_id for _distance, doc_id in scored[:k]]


async def _insert(session: AsyncSession, tenant_id: uuid.UUID, rows: list[dict[str, Any]]) -> None:
    user = await make_user(session, tenant_id)
    for row in rows:
        session.add(
            Document(
                tenant_id=tenant_id,
                user_id=user.id,
                s3_bucket="test-bucket",
                s3_key=f"docs/{row['id']}.pdf",
                filename="report.pdf",
                size_bytes=1024,
                **row,
            )
        )
    await session.flush()


def _rows(count: int, **overrides: Any) -> list[dict[str, Any]]:
    rows = []
    for index in range(count):
        row: dict[str, Any] = {
            "id": uuid.uuid4(),
            "embedding_vector": unit_vector(),
            "deleted_at": None,
            "status": "failed" if index % 40 == 0 else "completed",
            "content_type": "text/plain" if index % 3 == 0 else "application/pdf",
            "metadata_": {"team": "red" if index % 4 == 0 else "blue"},
        }
        row.update(overrides)
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
async def corpus(admin_sessions: async_sessionmaker[AsyncSession]) -> Corpus:
    """Three tenants' documents, inserted once for the module."""
    deleted = datetime.now(UTC)
    async with admin_transaction(admin_sessions) as session:
        big_id, tiny_id, neighbour_id = [(await make_tenant(session)).id for _ in range(3)]
    async with admin_transaction(admin_sessions) as session:
        big_rows = _rows(BIG_DOCS)
        for row in big_rows[:10]:
            row["deleted_at"] = deleted
        big_rows += _rows(3, embedding_vector=None)
        tiny_rows = _rows(TINY_DOCS)
        tiny_rows += _rows(2, deleted_at=deleted) + _rows(1, embedding_vector=None)
        # The neighbour holds exact copies of the tiny tenant's vectors: nearer than anything.
        neighbour_rows = [
            {
                **row,
                "id": uuid.uuid4(),
                "deleted_at": None,
                "embedding_vector": row["embedding_vector"],
            }
            for row in tiny_rows
            if row["embedding_vector"] is not None
        ]
        await _insert(session, big_id, big_rows)
        await _insert(session, tiny_id, tiny_rows)
        await _insert(session, neighbour_id, neighbour_rows)
    return Corpus(
        big_id,
        tiny_id,
        neighbour_id,
        {big_id: big_rows, tiny_id: tiny_rows, neighbour_id: neighbour_rows},
    )


@pytest.fixture
async def big_tenant_index(corpus: Corpus, maintain_vector_indexes: Any) -> None:
    """The big tenant's own HNSW index (the tiny ones are under the threshold)."""
    results = await maintain_vector_indexes(HNSW_FLOOR)
    indexed = {r.plan.tenant_id for r in results if r.index_bytes}
    assert corpus.big in indexed
    assert not {corpus.tiny, corpus.neighbour} & indexed


@pytest.fixture
def hnsw_path(monkeypatch: pytest.MonkeyPatch, big_tenant_index: None) -> None:
    """Lower the exact-scan floor so the big tenant takes the HNSW path on its own index."""
    monkeypatch.setattr(vector_search_service, "EXACT_SCAN_MIN_ROWS", HNSW_FLOOR)


async def _strategies(
    session: AsyncSession, query: list[float], k: int = 10, filters: SearchFilters | None = None
) -> set[str]:
    """Which path search_documents() took for this search (what the service calls)."""
    found = vector_search_service.SEARCH_FUNCTION
    parameters = vector_search_service.search_parameters(query, k, filters)
    return set((await session.execute(select(found.c.strategy), parameters)).scalars())


async def _search(
    sessions: async_sessionmaker[AsyncSession],
    tenant: uuid.UUID,
    query: list[float],
    k: int = 10,
    filters: SearchFilters | None = None,
) -> list[vector_search_service.SearchHit]:
    async with tenant_transaction(sessions, tenant) as session:
        return await Document.similarity_search(session, query, k, filters)


def _assert_nearest_first(hits: list[vector_search_service.SearchHit]) -> None:
    keys = [(hit.distance, hit.document.id) for hit in hits]
    assert keys == sorted(keys)


async def test_tiny_tenant_gets_exactly_the_exact_top_k(
    corpus: Corpus, runtime_sessions: async_sessionmaker[AsyncSession]
) -> None:
    # A query next to one of the tiny tenant's documents: the neighbour's copy is as near.
    query = corpus.searchable(corpus.tiny)[0]["embedding_vector"]
    hits = await _search(runtime_sessions, corpus.tiny, query, k=3)
    assert [hit.document.id for hit in hits] == corpus.exact(corpus.tiny, query, 3)
    assert all(hit.document.tenant_id == corpus.tiny for hit in hits)
    assert hits[0].distance == pytest.approx(0.0, abs=1e-6)
    _assert_nearest_first(hits)


async def test_k_above_the_tenant_count_returns_all_its_searchable_documents(
    corpus: Corpus, runtime_sessions: async_sessionmaker[AsyncSession]
) -> None:
    query = unit_vector()
    hits = await _search(runtime_sessions, corpus.tiny, query, k=50)
    assert [hit.document.id for hit in hits] == corpus.exact(corpus.tiny, query, 50)
    assert len(hits) == TINY_DOCS  # not the 2 deleted, not the 1 without an embedding


async def test_soft_deleted_and_other_tenants_documents_never_appear(
    corpus: Corpus, runtime_sessions: async_sessionmaker[AsyncSession], hnsw_path: None
) -> None:
    deleted = [row for row in corpus.rows[corpus.big] if row["deleted_at"] is not None]
    big_ids = {row["id"] for row in corpus.searchable(corpus.big)}
    for row in deleted[:3]:
        # The query IS a deleted document's vector: it must not come back, on the HNSW path.
        async with tenant_transaction(runtime_sessions, corpus.big) as session:
            hits = await Document.similarity_search(session, row["embedding_vector"], 20)
            assert await _strategies(session, row["embedding_vector"], 20) == {"hnsw"}
        assert len(hits) == 20
        assert {hit.document.id for hit in hits} <= big_ids
    tiny_deleted = [row for row in corpus.rows[corpus.tiny] if row["deleted_at"] is not None]
    hits = await _search(runtime_sessions, corpus.tiny, tiny_deleted[0]["embedding_vector"], k=20)
    assert {hit.document.id for hit in hits} == {r["id"] for r in corpus.searchable(corpus.tiny)}


async def test_big_tenant_on_the_hnsw_path_finds_the_nearest_in_order(
    corpus: Corpus, runtime_sessions: async_sessionmaker[AsyncSession], hnsw_path: None
) -> None:
    found = expected = 0
    for _ in range(5):
        query = unit_vector()
        async with tenant_transaction(runtime_sessions, corpus.big) as session:
            hits = await Document.similarity_search(session, query, 10)
            assert await _strategies(session, query) == {"hnsw"}
        assert len(hits) == 10
        _assert_nearest_first(hits)
        assert all(hit.document.tenant_id == corpus.big for hit in hits)
        exact = corpus.exact(corpus.big, query, 10)
        found += len({hit.document.id for hit in hits} & set(exact))
        expected += len(exact)
        for hit in hits:
            vector = next(r for r in corpus.rows[corpus.big] if r["id"] == hit.document.id)
            cosine = float(np.dot(vector["embedding_vector"], query))
            assert hit.distance == pytest.approx(1.0 - cosine, abs=1e-5)
    # The HNSW path is approximate by design; at this size it should miss nothing.
    assert found / expected >= 0.98


async def test_a_tenant_without_an_index_of_its_own_is_scanned_exactly(
    corpus: Corpus,
    runtime_sessions: async_sessionmaker[AsyncSession],
    maintain_vector_indexes: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A threshold far above the big tenant: the maintenance drops its index (if it had one).
    await maintain_vector_indexes(10 * BIG_DOCS)
    monkeypatch.setattr(vector_search_service, "EXACT_SCAN_MIN_ROWS", HNSW_FLOOR)
    query = unit_vector()
    async with tenant_transaction(runtime_sessions, corpus.big) as session:
        hits = await Document.similarity_search(session, query, 25)
        assert await _strategies(session, query, 25) == {"exact"}
    assert [hit.document.id for hit in hits] == corpus.exact(corpus.big, query, 25)


@pytest.mark.parametrize("path", ["exact", "hnsw"])
async def test_filters_are_honoured_and_a_selective_filter_does_not_starve(
    corpus: Corpus,
    runtime_sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
    big_tenant_index: None,
    path: str,
) -> None:
    # "exact": a floor over the whole tenant, so every filtered search scans exactly (whatever
    # the default floor); "hnsw": a low one, so the filters keeping more rows walk the index.
    floor = HNSW_FLOOR if path == "hnsw" else BIG_DOCS
    monkeypatch.setattr(vector_search_service, "EXACT_SCAN_MIN_ROWS", floor)
    query = unit_vector()
    cases: list[tuple[SearchFilters, Any]] = [
        (SearchFilters(status="failed"), lambda r: r["status"] == "failed"),
        (SearchFilters(content_type="text/plain"), lambda r: r["content_type"] == "text/plain"),
        (
            SearchFilters(metadata_contains={"team": "red"}),
            lambda r: r["metadata_"]["team"] == "red",
        ),
        (
            SearchFilters(
                status="completed",
                content_type="application/pdf",
                metadata_contains={"team": "blue"},
            ),
            lambda r: (
                r["status"] == "completed"
                and r["content_type"] == "application/pdf"
                and r["metadata_"]["team"] == "blue"
            ),
        ),
    ]
    for filters, keep in cases:
        matching = [r for r in corpus.searchable(corpus.big) if keep(r)]
        async with tenant_transaction(runtime_sessions, corpus.big) as session:
            hits = await Document.similarity_search(session, query, 10, filters)
            strategies = await _strategies(session, query, 10, filters)
        expected_path = "hnsw" if path == "hnsw" and len(matching) > HNSW_FLOOR else "exact"
        assert strategies == {expected_path}, filters
        assert len(hits) == min(10, len(matching)), filters
        assert all(keep(next(r for r in matching if r["id"] == h.document.id)) for h in hits)
        _assert_nearest_first(hits)
        if path == "exact" or len(matching) <= HNSW_FLOOR:
            assert [h.document.id for h in hits] == corpus.exact(corpus.big, query, 10, keep)


async def test_ties_are_ordered_by_id(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    vector = unit_vector()
    async with admin_transaction(admin_sessions) as session:
        tenant = await make_tenant(session)
        tenant_id = tenant.id
        await _insert(session, tenant_id, _rows(5, embedding_vector=vector))
    hits = await _search(runtime_sessions, tenant_id, vector, k=5)
    assert [hit.document.id for hit in hits] == sorted(hit.document.id for hit in hits)
    assert len({hit.distance for hit in hits}) == 1


_SETTINGS = text(
    "SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan'),"
    " current_setting('hnsw.max_scan_tuples'), current_setting('enable_sort')"
)


async def test_search_settings_do_not_leak_into_the_transaction_or_the_connection(
    corpus: Corpus, runtime_engine: AsyncEngine, hnsw_path: None
) -> None:
    async with runtime_engine.connect() as connection:
        on_this_connection = async_sessionmaker(bind=connection)
        async with tenant_transaction(on_this_connection, corpus.big) as session:
            await session.execute(text("SELECT '[1,2,3]'::vector"))  # load pgvector's settings
            before = (await session.execute(_SETTINGS)).one()
            query = unit_vector()
            hits = await Document.similarity_search(session, query, 10)
            assert len(hits) == 10
            assert await _strategies(session, query) == {"hnsw"}
            assert (await session.execute(_SETTINGS)).one() == before
            # And if the caller had tuned them itself, its values come back too.
            await session.execute(text("SELECT set_config('hnsw.ef_search', '77', true)"))
            await Document.similarity_search(session, unit_vector(), 10)
            assert (await session.execute(_SETTINGS)).one()[0] == "77"
        async with session.begin():
            after = (await session.execute(_SETTINGS)).one()
        await session.close()
    assert tuple(after) == ("40", "off", "20000", "on")
    assert tuple(before) == ("40", "off", "20000", "on")


@pytest.mark.parametrize(
    ("embedding", "k", "message"),
    [
        ([0.1] * 1023, 10, "exactly 1024 numbers, got 1023"),
        ([0.1] * 1023 + [math.nan], 10, "finite"),
        ([0.1] * 1023 + [math.inf], 10, "finite"),
        ([0.1] * 1023 + [True], 10, "only numbers"),
        ("0.1," * 1024, 10, "list of numbers"),
        ([0.1] * 1024, 0, "k must be an integer from 1 to 100"),
        ([0.1] * 1024, 101, "k must be an integer from 1 to 100"),
        ([0.1] * 1024, 2.5, "k must be an integer from 1 to 100"),
    ],
)
async def test_bad_input_is_refused_before_any_query(
    corpus: Corpus,
    runtime_sessions: async_sessionmaker[AsyncSession],
    embedding: Any,
    k: Any,
    message: str,
) -> None:
    async with tenant_transaction(runtime_sessions, corpus.tiny) as session:
        with pytest.raises(ValueError, match=message):
            await Document.similarity_search(session, embedding, k)


async def test_no_tenant_context_finds_nothing(
    corpus: Corpus, runtime_sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with runtime_sessions() as session, session.begin():
        assert await Document.similarity_search(session, unit_vector(), 10) == []
