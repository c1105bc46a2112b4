"""Shared request/response pieces: strict base models, bounded JSON metadata, embeddings."""

from __future__ import annotations

import json
import math
from array import array
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.models.document import EMBEDDING_DIMENSIONS

METADATA_MAX_BYTES = 64 * 1024
METADATA_MAX_DEPTH = 10
# The largest finite 32-bit float (pgvector's element type).
FLOAT32_MAX = 3.4028234663852886e38


class RequestModel(BaseModel):
    """Request bodies: unknown fields are refused and types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ResponseModel(BaseModel):
    """Response bodies, built from ORM objects' attributes."""

    model_config = ConfigDict(from_attributes=True)


def refuse_nul(value: str) -> str:
    """PostgreSQL text cannot hold NUL: refuse it here rather than fail in the database."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(refuse_nul)]
"""A string the database can store (no NUL characters)."""


def _checked_depth(value: Any) -> int:
    """Nesting depth of a JSON value; ValueError for what JSONB cannot store."""
    if isinstance(value, dict):
        for key in value:
            refuse_nul(key)
        return 1 + max((_checked_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_checked_depth(v) for v in value), default=0)
    if isinstance(value, str):
        refuse_nul(value)
    elif isinstance(value, float) and not math.isfinite(value):
        # Python's json accepts NaN and Infinity; JSON (and so JSONB) has no such numbers.
        raise ValueError("must not contain NaN or Infinity")
    return 0


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Metadata must be storable JSON, at most 64 KiB and nested at most 10 levels deep."""
    if _checked_depth(value) > METADATA_MAX_DEPTH:
        raise ValueError(f"nested deeper than {METADATA_MAX_DEPTH} levels")
    try:
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    if len(encoded) > METADATA_MAX_BYTES:
        raise ValueError(f"is {len(encoded)} bytes as JSON; the limit is {METADATA_MAX_BYTES}")
    return value


def check_embedding(values: list[float]) -> list[float]:
    """An embedding pgvector can store (32-bit floats) and measure by cosine distance.

    pgvector keeps and multiplies 32-bit floats: a value beyond their range is infinite
    there, and a vector whose squared length is 0 or overflows has no cosine distance
    (pgvector answers NaN, or a wrong 1.0), so both are refused up front.
    """
    # array("f") holds 32-bit floats as pgvector does: a value beyond their range becomes inf.
    stored = array("f", values)
    if not all(math.isfinite(value) for value in stored):
        raise ValueError("values must fit 32-bit floats (at most 3.4e38 in size)")
    squares = array("f", [value * value for value in stored])
    squared_length = math.fsum(squares)
    if not math.isfinite(squared_length) or squared_length > FLOAT32_MAX:
        raise ValueError("values are too large: the vector's squared length overflows")
    if squared_length == 0:
        raise ValueError("must not be all zeros (or so small that it rounds to zero)")
    return values


Metadata = Annotated[dict[str, Any], AfterValidator(check_metadata)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Embedding = Annotated[
    list[FiniteFloat],
    Field(
        min_length=EMBEDDING_DIMENSIONS,
        max_length=EMBEDDING_DIMENSIONS,
        description=f"Exactly {EMBEDDING_DIMENSIONS} finite numbers (32-bit range), not all zero.",
    ),
    AfterValidator(check_embedding),
]
