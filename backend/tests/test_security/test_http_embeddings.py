"""Embeddings and k over HTTP: malformed vectors and out-of-range k are 422 everywhere.

The JWT cases live in `tests/test_auth/test_bearer_tokens.py` (see docs/SECURITY.md).
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from app.database.vector_search import EMBEDDING_DIMENSIONS
from tests.test_security.http_world import DOCUMENTS, World, document_body, unit

# Embeddings and k -------------------------------------------------------------------------

_ONES = ",".join(["1"] * (EMBEDDING_DIMENSIONS - 1))
_BAD_EMBEDDINGS = {
    "NaN": f"[NaN,{_ONES}]",
    "Infinity": f"[Infinity,{_ONES}]",
    "-Infinity": f"[-Infinity,{_ONES}]",
    "huge exponent": f"[1e999,{_ONES}]",
    "a string": f'["1",{_ONES}]',
    "a boolean": f"[true,{_ONES}]",
    "null element": f"[null,{_ONES}]",
    "1023 numbers": f"[{_ONES}]",
    "1025 numbers": f"[1,1,{_ONES}]",
    "an object": '{"0": 1}',
    "empty": "[]",
    # Finite for Python, but not for pgvector's float4 (a database error before the fix).
    "beyond float32": f"[1e39,{_ONES}]",
    # Cosine distance is undefined for these (NaN distances before the fix).
    "all zeros": "[" + ",".join(["0"] * EMBEDDING_DIMENSIONS) + "]",
    "overflowing float4 sums": "[" + ",".join(["1e30"] * EMBEDDING_DIMENSIONS) + "]",
}


@pytest.mark.parametrize("case", sorted(_BAD_EMBEDDINGS))
async def test_bad_embedding_is_422_on_search_create_and_update(
    case: str, client: httpx.AsyncClient, world: World
) -> None:
    embedding = _BAD_EMBEDDINGS[case]
    headers = {**world.a.admin.headers, "Content-Type": "application/json"}
    create_body = json.dumps(document_body())[:-1] + f', "embedding": {embedding}}}'
    requests = [
        ("POST", f"{DOCUMENTS}/search", f'{{"embedding": {embedding}, "k": 5}}'),
        ("POST", DOCUMENTS, create_body),
        ("PATCH", f"{DOCUMENTS}/{world.a.document['id']}", f'{{"embedding": {embedding}}}'),
    ]
    for method, url, body in requests:
        response = await client.request(method, url, content=body, headers=headers)
        assert response.status_code == 422, (method, url, response.text)
        assert "embedding" in response.json()["error"]["message"]


@pytest.mark.parametrize("k", [0, -1, 101, "5", 5.5, None, True])
async def test_k_out_of_range_or_not_an_integer_is_422(
    k: Any, client: httpx.AsyncClient, world: World
) -> None:
    response = await client.post(
        f"{DOCUMENTS}/search", json={"embedding": unit(1), "k": k}, headers=world.a.admin.headers
    )
    assert response.status_code == 422, response.text
    assert "k" in response.json()["error"]["message"]


async def test_k_bounds_are_accepted(client: httpx.AsyncClient, world: World) -> None:
    for k in (1, 100):
        response = await client.post(
            f"{DOCUMENTS}/search",
            json={"embedding": unit(1), "k": k},
            headers=world.a.admin.headers,
        )
        assert response.status_code == 200, response.text
        assert math.isfinite(response.json()["items"][0]["distance"])
