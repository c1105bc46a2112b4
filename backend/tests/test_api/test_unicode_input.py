"""Text that UTF-8 cannot hold (a lone surrogate, JSON `"\\ud800"`) is a 422 in every body field.

The cases are read from the OpenAPI document: every operation with a JSON body, every property
of its schema (nested objects too), so a new field or a new request model is covered without
editing this test. The one mechanism under test is RequestModel's `*` validator.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from app.core.config import Settings
from app.main import create_app
from tests.test_api.conftest import API, Api, Tenants, embedding_towards

SURROGATE = "\ud800"
# Each must be refused wherever it is put: as the value itself, in a list, as a key, in a dict.
PROBES: dict[str, Any] = {
    "string": SURROGATE,
    "in a list": [SURROGATE],
    "as a key": {SURROGATE: "x"},
    "as a value": {"k": SURROGATE},
}


def _spec(settings: Settings) -> dict[str, Any]:
    spec: dict[str, Any] = create_app(settings).openapi()
    return spec


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema a `$ref` (or an optional `anyOf: [ref, null]`) points to."""
    for option in schema.get("anyOf", [schema]):
        if "$ref" in option:
            resolved: dict[str, Any] = spec["components"]["schemas"][option["$ref"].split("/")[-1]]
            return resolved
    return schema


def _fields(
    spec: dict[str, Any], schema: dict[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every property path of an object schema, descending into nested object schemas."""
    for name, property_schema in _resolve(spec, schema).get("properties", {}).items():
        path = (*prefix, name)
        yield path
        nested = _resolve(spec, property_schema)
        if "properties" in nested:
            yield from _fields(spec, nested, path)


def _example(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A valid body: the schema's documented example, with a full-length embedding."""
    example: dict[str, Any] = json.loads(json.dumps(_resolve(spec, schema)["examples"][0]))
    if "embedding" in example:
        example["embedding"] = embedding_towards(1)
    return example


def _body_operations(settings: Settings) -> list[tuple[str, str]]:
    operations = []
    for path, methods in _spec(settings)["paths"].items():
        for method, operation in methods.items():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                operations.append((method.upper(), path))
    return operations


def _with(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(body))
    target = copy
    for name in path[:-1]:
        target = target.setdefault(name, {})
        if not isinstance(target, dict):
            return copy
    target[path[-1]] = value
    return copy


def test_the_walk_reaches_the_reported_fields(settings: Settings) -> None:
    spec = _spec(settings)
    found = set()
    for method, path in _body_operations(settings):
        schema = spec["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]
        found |= {(path, ".".join(field)) for field in _fields(spec, schema["schema"])}
    assert {
        (f"{API}/documents/search", "filters.content_type"),
        (f"{API}/users", "full_name"),
        (f"{API}/users", "external_idp_id"),
    } <= found


async def test_every_body_field_refuses_a_lone_surrogate_with_422(
    api: Api, tenants: Tenants, settings: Settings
) -> None:
    spec = _spec(settings)
    document = await api.create_document(tenants.admin)
    before = await api.counts()
    checked = 0
    for method, path in _body_operations(settings):
        operation = spec["paths"][path][method.lower()]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        url = path.replace("{document_id}", document["id"])
        base = _example(spec, schema)
        valid = await api.client.request(method, url, json=base, headers=tenants.admin.headers)
        assert valid.status_code < 300 or valid.status_code == 409, (path, valid.text)
        before = await api.counts()
        probes = [((SURROGATE,), 1)]  # an unknown key that is itself a lone surrogate
        probes += [(field, value) for field in _fields(spec, schema) for value in PROBES.values()]
        for field, value in probes:
            body = _with(base, field, value)
            # ensure_ascii: the surrogate travels as the escape "\ud800", as an attacker sends it.
            response = await api.client.request(
                method,
                url,
                content=json.dumps(body, ensure_ascii=True),
                headers={**tenants.admin.headers, "Content-Type": "application/json"},
            )
            where = ".".join(field).encode("utf-8", "backslashreplace").decode()
            assert response.status_code == 422, (method, path, where, value, response.text)
            if field != (SURROGATE,):  # an unknown key is refused with the whole body
                assert where in response.json()["error"]["message"], (where, response.text)
            checked += 1
    assert checked > 60
    assert await api.counts() == before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            f"{API}/documents/search",
            {"embedding": embedding_towards(0), "filters": {"content_type": SURROGATE}},
        ),
        (f"{API}/users", {"email": f"u{uuid.uuid4().hex[:8]}@example.org", "full_name": SURROGATE}),
        (
            f"{API}/users",
            {"email": f"u{uuid.uuid4().hex[:8]}@example.org", "external_idp_id": SURROGATE},
        ),
    ],
    ids=["search filter content_type", "user full_name", "user external_idp_id"],
)
async def test_the_reported_surrogates_are_422(
    api: Api, tenants: Tenants, path: str, body: dict[str, Any]
) -> None:
    response = await api.client.post(
        path,
        content=json.dumps(body, ensure_ascii=True),
        headers={**tenants.admin.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert "lone surrogate" in response.json()["error"]["message"]
