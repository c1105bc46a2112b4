"""Nearest-neighbour search over the current tenant's documents, right for every tenant size.

One HNSW index serves every tenant and Row-Level Security filters what it returns, so a plain
`ORDER BY embedding_vector <=> q LIMIT k` finds almost nothing for a small tenant: the index
hands back its ~40 best candidates from the whole table and RLS drops the other tenants' ones.
The database function `search_documents()` (migration be3034b43ca6) therefore picks the
strategy per call, from a bounded count of the rows the search may return (this tenant's
active, embedded documents that pass the filters):

- up to max(EXACT_SCAN_MIN_ROWS, HNSW_MIN_SHARE of the HNSW index) rows: an exact scan of them
  through the tenant index (recall 1, and for that few rows faster than any index walk);
- more: the HNSW index with pgvector's iterative scan, re-sorted; exact again if the scan
  gives up short of k rows, so a selective filter never starves the result.

All in one round trip; its settings are SET clauses of the function, so they never leak into
the caller's transaction. docs/VECTOR_SEARCH.md has the measurements behind the thresholds.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import Float, Integer, String, bindparam, cast, column, func, select
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

if TYPE_CHECKING:
    from sqlalchemy import Select

    from app.models.document import Document

EMBEDDING_DIMENSIONS = 1024
MAX_K = 100
_PLAIN_NUMBERS = frozenset({float, int})

# Exact scans stay exact and cheap (a few ms) up to this many rows, whatever the table size.
EXACT_SCAN_MIN_ROWS = 1_000
# The HNSW path is taken only when the searchable rows are at least this share of the index.
# Below it, pgvector's iterative scan loses recall (see docs/VECTOR_SEARCH.md): the few
# matching rows are scattered thinly through a graph built for the whole table.
HNSW_MIN_SHARE = 0.05
# The HNSW candidate list (never below k).
HNSW_EF_SEARCH = 100
# How many index tuples an iterative scan may visit (pgvector's default). At a share >= 5%,
# k=100 rows need ~2,000; if the scan still gives up short, the search falls back to exact.
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
def _search_statement(model: type[Document]) -> Select[Any]:
    """The search as one statement, built once per process (a search only binds values)."""
    return (
        select(model, SEARCH_FUNCTION.c.distance)
        .join(SEARCH_FUNCTION, model.id == SEARCH_FUNCTION.c.id)
        .order_by(SEARCH_FUNCTION.c.distance, SEARCH_FUNCTION.c.id)
        .options(defer(model.embedding_vector, raiseload=True))
    )


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
) -> list[SearchHit]:
    """The current tenant's `k` nearest active documents, nearest first (ties by id).

    Hits carry no embedding (deferred with raiseload): 1024 floats per hit would dominate a
    small tenant's search, and callers don't need them.
    """
    query = validate_embedding(embedding)
    k = validate_k(k)
    statement = _search_statement(model)
    rows = (await session.execute(statement, search_parameters(query, k, filters))).all()
    return [SearchHit(document=row[0], distance=float(row[1])) for row in rows]


__all__ = [
    "MAX_K",
    "SearchFilters",
    "SearchHit",
    "similarity_search",
    "validate_embedding",
    "validate_k",
]
