"""Nearest-neighbour search over the current tenant's documents."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.document import EMBEDDING_DIMENSIONS, Document

MAX_K = 100


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
    if not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in items):
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


def _filtered(statement: Select[Any], filters: SearchFilters | None) -> Select[Any]:
    if filters is None:
        return statement
    if filters.status is not None:
        statement = statement.where(Document.status == filters.status)
    if filters.content_type is not None:
        statement = statement.where(Document.content_type == filters.content_type)
    if filters.metadata_contains:
        statement = statement.where(Document.metadata_.contains(filters.metadata_contains))
    return statement


async def similarity_search(
    session: AsyncSession, embedding: Any, k: int = 10, filters: SearchFilters | None = None
) -> list[SearchHit]:
    """The current tenant's `k` nearest active documents, nearest first (ties by id)."""
    query = validate_embedding(embedding)
    k = validate_k(k)
    distance = Document.embedding_vector.cosine_distance(query).label("distance")
    statement = (
        select(Document, distance)
        .where(Document.embedding_vector.is_not(None), Document.deleted_at.is_(None))
        .order_by(distance, Document.id)
        .limit(k)
    )
    rows = (await session.execute(_filtered(statement, filters))).all()
    return [SearchHit(document=row[0], distance=float(row[1])) for row in rows]
