"""Nearest-neighbour search over the current tenant's documents, right for every tenant size.

One HNSW index serves every tenant and Row-Level Security filters what it returns, so a plain
`ORDER BY embedding_vector <=> q LIMIT k` finds almost nothing for a small tenant: the index
hands back its ~40 best candidates from the whole table and RLS drops the other tenants' ones.
So the strategy depends on how many rows the search may return (the tenant's active, embedded
documents that pass the filters):

- up to `exact_scan_limit()` rows (1,000, or 5% of the HNSW index if more): an exact scan of
  those rows through the tenant index. It is exact (recall 1) and, for few rows, faster than
  any index walk.
- more rows: the HNSW index with pgvector's iterative scan, which keeps walking the graph
  until enough rows pass the tenant and filter conditions. At a share of the index >= 5% that
  gives recall@10 >= 0.99; below it, recall drops whatever `ef_search` (see
  docs/VECTOR_SEARCH.md for the measurements behind the numbers below).

The count is bounded (`LIMIT threshold + 1` on an index-only scan), so it costs little even
for the largest tenant, and it runs in the same statement as the exact scan, so a small
tenant's search is one round trip.
"""

from __future__ import annotations

import math
import numbers
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    String,
    bindparam,
    cast,
    func,
    literal,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, defer

from app.database.tenant_context import TENANT_SETTING
from app.models.document import EMBEDDING_DIMENSIONS, Document

MAX_K = 100
_PLAIN_NUMBERS = frozenset({float, int})

# Exact scans stay exact and cheap (a few ms) up to this many rows, whatever the table size.
EXACT_SCAN_MIN_ROWS = 1_000
# The HNSW path is taken only when the searchable rows are at least this share of the index.
# Below it, pgvector's iterative scan loses recall (measured: recall@10 0.93-0.96 at 2-4%
# whatever ef_search, 1.000 from 6%), because the few matching rows are scattered thinly
# through the graph. See docs/VECTOR_SEARCH.md.
HNSW_MIN_SHARE = 0.05
# The HNSW candidate list (never below k). 40 (pgvector's default) already gives recall 1.000
# at a share >= 6% in the benchmark; 100 is the margin for k up to 100 and for harder data.
HNSW_EF_SEARCH = 100
# How many index tuples an iterative scan may visit (pgvector's default). At a share >= 5%,
# k=100 rows need ~2,000; if the scan still gives up short, the search falls back to exact.
HNSW_MAX_SCAN_TUPLES = 20_000

# Set transaction-locally around the HNSW query, and put back afterwards. enable_sort=off
# keeps the planner on the HNSW index: it would otherwise often prefer the tenant index and a
# sort, i.e. an exact scan of a large tenant.
_SEARCH_SETTINGS = ("hnsw.iterative_scan", "hnsw.ef_search", "hnsw.max_scan_tuples", "enable_sort")


@dataclass(frozen=True)
class SearchFilters:
    """Optional restrictions on which documents a search considers."""

    status: str | None = None
    content_type: str | None = None
    metadata_contains: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchHit:
    """A document and its cosine distance to the query (0 = same direction)."""

    document: Document
    distance: float


def validate_embedding(embedding: Any) -> list[float]:
    """Return `embedding` as 1024 floats, or raise ValueError saying what is wrong."""
    if isinstance(embedding, str | bytes | dict):
        raise ValueError("embedding must be a list of numbers")
    try:
        items = list(embedding)
    except TypeError:
        raise ValueError("embedding must be a list of numbers") from None
    # type() first: the ABC check is slow, and a search validates 1024 of them per call.
    if not all(
        type(x) in _PLAIN_NUMBERS or (isinstance(x, numbers.Real) and not isinstance(x, bool))
        for x in items
    ):
        raise ValueError("embedding must contain only numbers")
    values = [float(x) for x in items]
    if len(values) != EMBEDDING_DIMENSIONS:
        raise ValueError(
            f"embedding must have exactly {EMBEDDING_DIMENSIONS} numbers, got {len(values)}"
        )
    if not all(math.isfinite(v) for v in values):
        raise ValueError("embedding must contain only finite numbers (no NaN or Infinity)")
    return values


def validate_k(k: Any) -> int:
    """Return `k` if it is an int in 1..100, else raise ValueError."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer from 1 to {MAX_K}")
    return k


def current_tenant_id() -> ColumnElement[uuid.UUID]:
    """The transaction's tenant, read the way the RLS policies read it (NULL when unset)."""
    setting = func.nullif(func.current_setting(TENANT_SETTING, true()), "")
    return select(cast(setting, UUID(as_uuid=True))).scalar_subquery()


@dataclass(frozen=True)
class _FilterShape:
    """Which filters a search uses: the statements are built once per shape, values bound."""

    status: bool = False
    content_type: bool = False
    metadata: bool = False

    @classmethod
    def of(cls, filters: SearchFilters | None) -> _FilterShape:
        if filters is None:
            return cls()
        return cls(
            filters.status is not None,
            filters.content_type is not None,
            bool(filters.metadata_contains),
        )


_QUERY = bindparam("query", type_=Vector(EMBEDDING_DIMENSIONS))
_K = bindparam("k", type_=Integer)


def searchable_conditions(shape: _FilterShape) -> list[ColumnElement[bool]]:
    """What a row must satisfy to be a result: the tenant's, active, embedded, filtered."""
    conditions = [
        Document.tenant_id == current_tenant_id(),
        Document.deleted_at.is_(None),
        Document.embedding_vector.is_not(None),
    ]
    if shape.status:
        conditions.append(Document.status == bindparam("status", type_=String))
    if shape.content_type:
        conditions.append(Document.content_type == bindparam("content_type", type_=String))
    if shape.metadata:
        conditions.append(Document.metadata_.contains(bindparam("metadata", type_=JSONB)))
    return conditions


def _parameters(query: list[float], k: int, filters: SearchFilters | None) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "query": query,
        "k": k,
        "exact_min_rows": EXACT_SCAN_MIN_ROWS,
        "hnsw_min_share": HNSW_MIN_SHARE,
    }
    if filters is not None:
        parameters.update(
            status=filters.status,
            content_type=filters.content_type,
            metadata=filters.metadata_contains,
        )
    return parameters


def exact_scan_limit() -> ColumnElement[int]:
    """The most rows searched exactly: the floor, or the HNSW minimum share of the index.

    The index's row count comes from the catalog (kept by VACUUM/ANALYZE), so it costs nothing
    and never leaves the database. The two constants are bound per call, not baked into the
    cached statement.
    """
    index_rows = (
        select(func.greatest(text("reltuples"), 0))
        .select_from(text("pg_catalog.pg_class"))
        .where(text("oid = 'idx_documents_embedding_hnsw'::regclass"))
        .scalar_subquery()
    )
    share = cast(func.ceil(index_rows * bindparam("hnsw_min_share", type_=Float)), Integer)
    return func.greatest(bindparam("exact_min_rows", type_=Integer), func.coalesce(share, 0))


def _without_embedding(entity: Any) -> Any:
    # Hits carry no embedding: 1024 floats per hit would dominate a small tenant's search, and
    # callers never need it. Touching it raises instead of loading it behind the caller's back.
    return defer(entity.embedding_vector, raiseload=True)


@cache
def _exact_statement(shape: _FilterShape, *, gated: bool) -> Select[Any]:
    """The exact top k, with the (bounded) number of searchable rows on every output row.

    With `gated`, the scan only runs when that count is within the exact-scan limit; otherwise
    the statement returns one row with the count and no document.
    """
    limit = exact_scan_limit()
    bounded = select(literal(1)).where(*searchable_conditions(shape)).limit(limit + 1)
    counted = (
        select(func.count().label("rows"), limit.label("limit"))
        .select_from(bounded.subquery("searchable"))
        .cte("counted")
    )
    scan_conditions = searchable_conditions(shape)
    if gated:
        scan_conditions.append(select(counted.c.rows <= counted.c.limit).scalar_subquery())
    distance = Document.embedding_vector.cosine_distance(_QUERY).label("distance")
    # OFFSET 0 keeps the distance a plain column of a subquery, so the planner can't hand the
    # ORDER BY to the HNSW index (which would make the scan approximate again).
    scored = select(Document, distance).where(*scan_conditions).offset(0).subquery("scored")
    ranked = select(scored).order_by(scored.c.distance, scored.c.id).limit(_K).subquery("ranked")
    hit = aliased(Document, ranked)
    return (
        select(counted.c.rows, counted.c.limit, hit, ranked.c.distance)
        .select_from(counted)
        .outerjoin(ranked, true())
        .order_by(ranked.c.distance, ranked.c.id)
        .options(_without_embedding(hit))
    )


@cache
def _hnsw_statement(shape: _FilterShape) -> Select[Any]:
    """The approximate top k from the HNSW index, re-sorted nearest first (ties by id)."""
    distance = Document.embedding_vector.cosine_distance(_QUERY)
    # relaxed_order may hand rows back slightly out of order: the outer query sorts them.
    candidates = (
        select(Document.id, distance.label("distance"))
        .where(*searchable_conditions(shape))
        .order_by(distance)
        .limit(_K)
        .subquery("candidates")
    )
    return (
        select(Document, candidates.c.distance)
        .join(candidates, Document.id == candidates.c.id)
        .order_by(candidates.c.distance, Document.id)
        .options(_without_embedding(Document))
    )


_READ_AND_SET_HNSW = text(
    "WITH previous AS MATERIALIZED ("
    " SELECT current_setting('hnsw.iterative_scan', true) AS iterative_scan,"
    " current_setting('hnsw.ef_search', true) AS ef_search,"
    " current_setting('hnsw.max_scan_tuples', true) AS max_scan_tuples,"
    " current_setting('enable_sort') AS enable_sort)"
    " SELECT previous.*,"
    " set_config('hnsw.iterative_scan', 'relaxed_order', true),"
    " set_config('hnsw.ef_search', :ef_search, true),"
    " set_config('hnsw.max_scan_tuples', :max_scan_tuples, true),"
    " set_config('enable_sort', 'off', true)"
    " FROM previous"
)


async def _hnsw_search(
    session: AsyncSession, query: list[float], k: int, filters: SearchFilters | None
) -> list[SearchHit]:
    """Run the HNSW search with transaction-local settings, then put the settings back."""
    previous = (
        await session.execute(
            _READ_AND_SET_HNSW,
            {
                "ef_search": str(max(HNSW_EF_SEARCH, k)),
                "max_scan_tuples": str(HNSW_MAX_SCAN_TUPLES),
            },
        )
    ).one()
    try:
        statement = _hnsw_statement(_FilterShape.of(filters))
        rows = (await session.execute(statement, _parameters(query, k, filters))).all()
    finally:
        restore = {
            name: value
            for name, value in zip(_SEARCH_SETTINGS, previous[: len(_SEARCH_SETTINGS)], strict=True)
            if value is not None
        }
        assignments = ", ".join(
            f"set_config('{name}', :value_{index}, true)" for index, name in enumerate(restore)
        )
        await session.execute(
            text(f"SELECT {assignments}"),
            {f"value_{index}": value for index, value in enumerate(restore.values())},
        )
    return [SearchHit(document=row[0], distance=float(row[1])) for row in rows]


async def exact_search(
    session: AsyncSession, embedding: Any, k: int = 10, filters: SearchFilters | None = None
) -> list[SearchHit]:
    """The exact top k of the current tenant (a full scan of its rows), nearest first."""
    query = validate_embedding(embedding)
    k = validate_k(k)
    statement = _exact_statement(_FilterShape.of(filters), gated=False)
    rows = (await session.execute(statement, _parameters(query, k, filters))).all()
    return [SearchHit(document=row[2], distance=float(row[3])) for row in rows if row[2] is not None]


async def similarity_search(
    session: AsyncSession, embedding: Any, k: int = 10, filters: SearchFilters | None = None
) -> list[SearchHit]:
    """The current tenant's `k` nearest active documents, nearest first (ties by id)."""
    query = validate_embedding(embedding)
    k = validate_k(k)
    statement = _exact_statement(_FilterShape.of(filters), gated=True)
    rows = (await session.execute(statement, _parameters(query, k, filters))).all()
    searchable, limit = rows[0][0], rows[0][1]
    if searchable <= limit:
        return [SearchHit(document=row[2], distance=float(row[3])) for row in rows if row[2] is not None]
    hits = await _hnsw_search(session, query, k, filters)
    if len(hits) < k:
        # The iterative scan gave up (max_scan_tuples) before finding k rows that pass the
        # filters: the rows are too few and scattered for the index, so scan them exactly.
        return await exact_search(session, query, k, filters)
    return hits


__all__ = [
    "MAX_K",
    "SearchFilters",
    "SearchHit",
    "exact_search",
    "similarity_search",
    "validate_embedding",
    "validate_k",
]
