"""Shared request/response pieces: strict base models, bounded JSON metadata, embeddings."""

from __future__ import annotations

import json
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from app.models.document import EMBEDDING_DIMENSIONS

METADATA_MAX_BYTES = 64 * 1024
METADATA_MAX_DEPTH = 10


def refuse_nul(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL characters: refuse them as bad input, not a 500."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


NO_NUL_PATTERN = "^[^\x00]*$"
"""For query parameters: the same rule as `refuse_nul`, as a regular expression."""


class RequestModel(BaseModel):
    """Request bodies: unknown fields are refused, types are not coerced, text has no NUL."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return refuse_nul(value)


class ResponseModel(BaseModel):
    """Response bodies, built from ORM objects' attributes."""

    model_config = ConfigDict(from_attributes=True)


def _depth(value: Any) -> int:
    # Iterative, so a pathologically deep value is measured instead of overflowing the stack.
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            level += 1
            deepest = max(deepest, level)
            if deepest > METADATA_MAX_DEPTH:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level) for child in children)
    return deepest


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Metadata must be at most 64 KiB as JSON and nested at most 10 levels deep."""
    if _depth(value) > METADATA_MAX_DEPTH:
        raise ValueError(f"metadata is nested deeper than {METADATA_MAX_DEPTH} levels")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"metadata is {size} bytes as JSON; the limit is {METADATA_MAX_BYTES}")
    if _has_nul(value):
        # PostgreSQL's jsonb cannot store \u0000; refuse it here rather than fail in the database.
        raise ValueError("metadata must not contain NUL characters")
    return value


# pgvector stores float4 and sums squares in float4: a bound far below float4's range keeps
# every cosine distance finite (model embeddings are of the order of 1).
EMBEDDING_COMPONENT_LIMIT = 1e6


def check_embedding(value: list[float]) -> list[float]:
    """A vector with no direction (all zeros once stored as float4) has no cosine distance."""
    as_stored = np.asarray(value, dtype=np.float32)
    if float(np.dot(as_stored, as_stored)) < np.finfo(np.float32).tiny:
        raise ValueError("embedding must not be all zeros (or too small to have a direction)")
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(check_metadata)]
FiniteFloat = Annotated[
    float,
    Field(allow_inf_nan=False, ge=-EMBEDDING_COMPONENT_LIMIT, le=EMBEDDING_COMPONENT_LIMIT),
]
Embedding = Annotated[
    list[FiniteFloat],
    Field(
        min_length=EMBEDDING_DIMENSIONS,
        max_length=EMBEDDING_DIMENSIONS,
        description=f"Exactly {EMBEDDING_DIMENSIONS} numbers, each within"
        f" ±{EMBEDDING_COMPONENT_LIMIT:g}, not all zero.",
    ),
    AfterValidator(check_embedding),
]
