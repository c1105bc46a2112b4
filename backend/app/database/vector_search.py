"""Nearest-neighbour search over the current tenant's documents, reading only its own data.

Every search reads only the current tenant's structures (issue 16; docs/VECTOR_SEARCH.md):

- A tenant past `VECTOR_INDEX_MIN_ROWS` searchable documents gets an HNSW index of its own, a
  partial index built and dropped by the maintenance command (app/services/vector_indexes.py,
  `tenantdocs vector-indexes`), never by a request.
- The database function `search_documents()` (migration 5d2e8f1a9c37) walks that index when
  it exists and is valid (iterative scan, re-sorted), unless the filters keep too few rows for
  the walk to find them (at most max(EXACT_SCAN_MIN_ROWS, HNSW_MIN_SHARE of the index)): then,
  and for every tenant without a valid index of its own (small, or being indexed right now),
  it scans the tenant's rows exactly through the tenant index.

No search walks a structure holding other tenants' vectors, so neither what it finds nor how
long it takes depends on their data. All in one round trip; the function's settings are SET
clauses, so they never leak into the caller's transaction.

This module imports no model at run time (Document calls it, passing itself), so
app.models.document and this module do not import each other.
"""

from __future__ import annotations

import math
import numbers
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import Float, Integer, String, bindparam, cast, column, func, select
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from app.core import metrics

if TYPE_CHECKING:
    from sqlalchemy import Select

    from app.models.document import Document

EMBEDDING_DIMENSIONS = 1024
MAX_K = 100
_PLAIN_NUMBERS = frozenset({float, int})

# With an index of its own, a filtered search still scans exactly when the filters keep at
# most this many rows (under half of VECTOR_INDEX_MIN_ROWS, so an unfiltered search of an
# indexed tenant always walks its index), or HNSW_MIN_SHARE of the index: pgvector's
# iterative scan loses recall when the matching rows are a small share of the graph.
EXACT_SCAN_MIN_ROWS = 100
HNSW_MIN_SHARE = 0.05
# The HNSW candidate list (never below k): the walk's recall on dense clusters
# (docs/VECTOR_SEARCH.md, "Why these settings").
HNSW_EF_SEARCH = 100
# How many index tuples an iterative scan may visit (pgvector's default); if the scan gives
# up short of k rows, the search falls back to exact.
HNSW_MAX_SCAN_TUPLES = 20_000


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


# Built once: a search only binds values (building and caching-keying the statement per call
# would cost more than a small tenant's whole search).
SEARCH_FUNCTION = (
    func.search_documents(
        cast(bindparam("query", type_=String), Vector(EMBEDDING_DIMENSIONS)),
        bindparam("k", type_=Integer),
        bindparam("status", type_=String),
        bindparam("content_type", type_=String),
        # none_as_null: no filter is SQL NULL, not the JSON value null.
        bindparam("metadata", type_=JSONB(none_as_null=True)),
        bindparam("exact_min_rows", type_=Integer),
        bindparam("hnsw_min_share", type_=Float),
        bindparam("ef_search", type_=Integer),
        bindparam("max_scan_tuples", type_=Integer),
    )
    .table_valued(
        column("id", UUID(as_uuid=True)), column("distance", Float), column("strategy", String)
    )
    .alias("found")
)


@cache
def _search_statement(model: type[Document], filter_tenant: bool) -> Select[Any]:
    """The search as one statement, built once per process (a search only binds values).

    `filter_tenant`: name the tenant explicitly (`tenant_id = :tenant_id`) besides the context,
    so on Citus the query goes to the tenant's shard only (docs/SCALING.md).
    """
    statement = (
        select(model, SEARCH_FUNCTION.c.distance, SEARCH_FUNCTION.c.strategy)
        .join(SEARCH_FUNCTION, model.id == SEARCH_FUNCTION.c.id)
        .order_by(SEARCH_FUNCTION.c.distance, SEARCH_FUNCTION.c.id)
        .options(defer(model.embedding_vector, raiseload=True))
    )
    if filter_tenant:
        statement = statement.where(model.tenant_id == bindparam("tenant_id"))
    return statement


def search_parameters(query: list[float], k: int, filters: SearchFilters | None) -> dict[str, Any]:
    """The values SEARCH_FUNCTION binds, thresholds included (read per call)."""
    filters = filters or SearchFilters()
    return {
        # pgvector's text form, made once; repr round-trips every float exactly.
        "query": "[" + ",".join(map(repr, query)) + "]",
        "k": k,
        "status": filters.status,
        "content_type": filters.content_type,
        "metadata": filters.metadata_contains or None,
        "exact_min_rows": EXACT_SCAN_MIN_ROWS,
        "hnsw_min_share": HNSW_MIN_SHARE,
        "ef_search": HNSW_EF_SEARCH,
        "max_scan_tuples": HNSW_MAX_SCAN_TUPLES,
    }


async def similarity_search(
    model: type[Document],
    session: AsyncSession,
    embedding: Any,
    k: int = 10,
    filters: SearchFilters | None = None,
    *,
    tenant_id: uuid.UUID | None = None,
) -> list[SearchHit]:
    """The current tenant's `k` nearest active documents, nearest first (ties by id).

    Called as `Document.similarity_search(session, embedding, k, filters)`. Hits carry no
    embedding (deferred with raiseload): 1024 floats per hit would dominate a small tenant's
    search, and callers don't need them.
    """
    query = validate_embedding(embedding)
    k = validate_k(k)
    statement = _search_statement(model, tenant_id is not None)
    parameters = search_parameters(query, k, filters)
    if tenant_id is not None:
        parameters["tenant_id"] = tenant_id
    rows = (await session.execute(statement, parameters)).all()
    # One strategy per search (the function picks it before scanning); none when nothing matched.
    metrics.SEARCH_STRATEGY.labels(strategy=str(rows[0][2]) if rows else "no_hits").inc()
    return [SearchHit(document=row[0], distance=float(row[1])) for row in rows]


__all__ = [
    "EMBEDDING_DIMENSIONS",
    "MAX_K",
    "SearchFilters",
    "SearchHit",
    "similarity_search",
    "validate_embedding",
    "validate_k",
]
