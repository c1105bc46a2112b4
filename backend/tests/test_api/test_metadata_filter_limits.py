"""Metadata containment filters are bounded in size and shape (issue 13: a 34 KB filter of
arrays used up the whole statement timeout). Each limit: at the limit 200, one past it 422
naming the limit, in the list filter and the search filter alike; the limits are in OpenAPI.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.core.config import Settings
from app.main import create_app
from app.schemas.common import (
    FILTER_LIMITS_TEXT,
    FILTER_MAX_ARRAY_ITEMS,
    FILTER_MAX_BYTES,
    FILTER_MAX_DEPTH,
    FILTER_MAX_KEYS,
)
from tests.test_api.conftest import API, Api, Tenants, embedding_towards

DOCS = f"{API}/documents"


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"child": value}
    return value


def _sized(size: int) -> dict[str, Any]:
    """A one-key filter exactly `size` bytes long as compact JSON."""
    return {"k": "x" * (size - len('{"k":""}'))}


# name -> (filter at the limit, filter one past it, words the 422 must contain: a|b for either)
LIMITS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "bytes": (
        _sized(FILTER_MAX_BYTES),
        _sized(FILTER_MAX_BYTES + 1),
        f"limit is {FILTER_MAX_BYTES}",
    ),
    "depth": (_nested(FILTER_MAX_DEPTH), _nested(FILTER_MAX_DEPTH + 1), "nested"),
    "keys": (
        {f"k{i}": i for i in range(FILTER_MAX_KEYS)},
        {f"k{i}": i for i in range(FILTER_MAX_KEYS + 1)},
        f"keys; the limit is {FILTER_MAX_KEYS}",
    ),
    "array items": (
        {"ids": list(range(FILTER_MAX_ARRAY_ITEMS))},
        {"ids": list(range(FILTER_MAX_ARRAY_ITEMS + 1))},
        f"items; the limit is {FILTER_MAX_ARRAY_ITEMS}",
    ),
    # The reported attack: ~34 KB of arrays (the search body's 422 names the byte limit).
    "the reported 34 KB of arrays": (
        {"ids": list(range(FILTER_MAX_ARRAY_ITEMS))},
        {f"a{i}": list(range(1000, 1000 + 700)) for i in range(5)},
        # The list's raw query text is past its length limit; the search body past the bytes.
        "at most|the limit is",
    ),
}


async def _list(api: Api, tenants: Tenants, metadata: dict[str, Any]) -> Any:
    return await api.client.get(
        DOCS, params={"metadata": json.dumps(metadata)}, headers=tenants.admin.headers
    )


async def _search(api: Api, tenants: Tenants, metadata: dict[str, Any]) -> Any:
    return await api.client.post(
        f"{DOCS}/search",
        json={"embedding": embedding_towards(0), "filters": {"metadata": metadata}},
        headers=tenants.admin.headers,
    )


@pytest.mark.parametrize("limit", list(LIMITS))
async def test_each_filter_limit_holds_in_list_and_search(
    api: Api, tenants: Tenants, limit: str
) -> None:
    at_limit, past_limit, words = LIMITS[limit]
    for send in (_list, _search):
        accepted = await send(api, tenants, at_limit)
        assert accepted.status_code == 200, (limit, send.__name__, accepted.text)
        refused = await send(api, tenants, past_limit)
        assert refused.status_code == 422, (limit, send.__name__, refused.text)
        message = refused.json()["error"]["message"]
        assert "metadata" in message, (limit, message)
        assert any(word in message for word in words.split("|")), (limit, message)


async def test_stored_metadata_keeps_its_own_larger_limits(api: Api, tenants: Tenants) -> None:
    """The filter limits bound queries only: a document may still hold long arrays."""
    stored = {"ids": list(range(FILTER_MAX_ARRAY_ITEMS * 10))}
    document = await api.create_document(tenants.admin, metadata=stored)
    assert document["metadata"] == stored


def test_the_limits_are_in_the_openapi_document(settings: Settings) -> None:
    spec = create_app(settings).openapi()
    listing = spec["paths"][DOCS]["get"]["parameters"]
    metadata_parameter = next(p for p in listing if p["name"] == "metadata")
    assert FILTER_LIMITS_TEXT in metadata_parameter["description"]
    search_filters = spec["components"]["schemas"]["SearchFilters"]["properties"]["metadata"]
    assert FILTER_LIMITS_TEXT in search_filters["description"]
