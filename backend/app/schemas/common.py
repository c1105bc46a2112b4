"""Shared request/response pieces: strict base models, bounded JSON metadata, embeddings."""

from __future__ import annotations

import functools
import json
import math
from array import array
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import inspect

from app.database.vector_search import EMBEDDING_DIMENSIONS

METADATA_MAX_BYTES = 64 * 1024
METADATA_MAX_DEPTH = 10
# The largest finite 32-bit float (pgvector's element type).
FLOAT32_MAX = 3.4028234663852886e38


def refuse_unencodable(value: Any) -> Any:
    """Refuse a lone surrogate (JSON `"\\ud800"`) anywhere in a value: UTF-8 cannot hold it.

    Python's json accepts such escapes; PostgreSQL, the JSON encoder of the response and the
    logs cannot encode the result, so it must stop here as a 422, not fail later as a 500.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "must be valid Unicode text (no lone surrogates such as \\ud800)"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_unencodable(key)
            refuse_unencodable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            refuse_unencodable(item)
    return value


class RequestModel(BaseModel):
    """Request bodies: unknown fields are refused, types are not coerced, text is valid Unicode.

    The one check for every string of every request body (nested strings, dict keys and list
    items too) is the `*` validator below: a new field of a new request model gets it by
    inheriting from this class, so no field can forget it.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _refuse_unencodable(cls, value: Any) -> Any:
        return refuse_unencodable(value)


class ResponseModel(BaseModel):
    """Response bodies, built from ORM objects' attributes."""

    model_config = ConfigDict(from_attributes=True)


PageT = TypeVar("PageT", bound=BaseModel)


@functools.cache
def _item_attributes(page_model: type[BaseModel]) -> frozenset[str]:
    """The ORM attribute names a page's item model reads (its validation aliases, else names)."""
    (item_model,) = get_args(page_model.model_fields["items"].annotation)
    return frozenset(
        field.validation_alias if isinstance(field.validation_alias, str) else name
        for name, field in item_model.model_fields.items()
    )


def page_of(page_model: type[PageT], rows: Sequence[object], next_cursor: str | None) -> PageT:
    """A page response (`items`, `next_cursor`) from ORM rows, validated in one call.

    Each row goes in as the values SQLAlchemy loaded into it (its instance dict), read by
    pydantic-core directly: reading them through the ORM's attribute descriptors was half the
    page's validation time (issue 20; docs/PERFORMANCE.md). A row missing one of the item's
    attributes (expired by a commit, or deferred) goes in as the row itself, so the ORM loads
    it as before.
    """
    needed = _item_attributes(page_model)
    items: list[object] = []
    for row in rows:
        loaded = inspect(row).dict
        items.append(loaded if needed <= loaded.keys() else row)
    return page_model.model_validate(
        {"items": items, "next_cursor": next_cursor}, from_attributes=True
    )


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


# A containment filter (`metadata @> filter`) costs database CPU per candidate row in
# proportion to its size: a 34 KB filter of arrays used up a 5 s statement timeout. A filter
# names a few keys and values, so it is held to far less than stored metadata (docs/SECURITY.md).
FILTER_MAX_BYTES = 4096
FILTER_MAX_DEPTH = 4
FILTER_MAX_KEYS = 32
FILTER_MAX_ARRAY_ITEMS = 16
FILTER_LIMITS_TEXT = (
    f"A filter is at most {FILTER_MAX_BYTES} bytes as compact JSON, nested at most"
    f" {FILTER_MAX_DEPTH} levels, with at most {FILTER_MAX_KEYS} keys in all and"
    f" {FILTER_MAX_ARRAY_ITEMS} items per array (422 naming the limit otherwise)."
)


def _filter_shape(value: Any, depth: int = 1) -> tuple[int, int]:
    """(nesting depth, total keys) of a JSON value; ValueError on an over-long array."""
    if isinstance(value, dict):
        children = [_filter_shape(item, depth + 1) for item in value.values()]
        return max([depth, *(d for d, _ in children)]), len(value) + sum(k for _, k in children)
    if isinstance(value, list):
        if len(value) > FILTER_MAX_ARRAY_ITEMS:
            raise ValueError(
                f"filter has an array of {len(value)} items; the limit is {FILTER_MAX_ARRAY_ITEMS}"
            )
        children = [_filter_shape(item, depth + 1) for item in value]
        return max([depth, *(d for d, _ in children)]), sum(k for _, k in children)
    return depth - 1, 0


def check_metadata_filter(value: dict[str, Any]) -> dict[str, Any]:
    """A metadata containment filter: storable JSON within the filter limits (FILTER_*)."""
    check_metadata(value)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > FILTER_MAX_BYTES:
        raise ValueError(f"filter is {size} bytes as JSON; the limit is {FILTER_MAX_BYTES}")
    depth, keys = _filter_shape(value)
    if depth > FILTER_MAX_DEPTH:
        raise ValueError(f"filter is nested {depth} levels deep; the limit is {FILTER_MAX_DEPTH}")
    if keys > FILTER_MAX_KEYS:
        raise ValueError(f"filter has {keys} keys; the limit is {FILTER_MAX_KEYS}")
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(check_metadata)]
MetadataFilter = Annotated[dict[str, Any], AfterValidator(check_metadata_filter)]
"""A JSON object documents' metadata must contain (JSONB `@>`), within the filter limits."""
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
