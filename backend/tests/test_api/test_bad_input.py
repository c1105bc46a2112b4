"""Bad input never half-writes: 422 naming the field, and not one row written anywhere."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from app.database.vector_search import EMBEDDING_DIMENSIONS
from app.schemas.common import METADATA_MAX_BYTES
from tests.test_api.conftest import API, Api, Tenants, document_body, embedding_towards


def _nested(depth: int) -> dict[str, Any]:
    """A metadata object nested `depth` levels deep (1 = a flat object)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"child": value}
    return value


def _raw_document(embedding_text: str) -> str:
    """A POST /documents body as JSON text whose embedding is `embedding_text` verbatim."""
    body = json.dumps(document_body())
    return body[:-1] + f', "embedding": {embedding_text}}}'


def _raw_numbers(first: str) -> str:
    return "[" + ", ".join([first] + ["0.5"] * (EMBEDDING_DIMENSIONS - 1)) + "]"


@dataclass(frozen=True)
class Bad:
    """A request that must be refused with 422 naming `field`."""

    method: str
    path: str  # {doc} is replaced by an existing document's id
    field: str
    body: Any = None  # sent as JSON
    raw: str | None = None  # sent verbatim as the JSON text (NaN, Infinity)
    params: dict[str, Any] | None = None


OVERSIZED = {"blob": "x" * METADATA_MAX_BYTES}
DOCS = f"{API}/documents"
SEARCH = f"{API}/documents/search"
ONE = f"{API}/documents/{{doc}}"
VECTOR = embedding_towards(0)

CASES: dict[str, Bad] = {
    # POST /documents
    "unknown field": Bad("POST", DOCS, "owner_id", document_body(owner_id="x")),
    "missing field": Bad("POST", DOCS, "filename", document_body(filename=...)),
    "size as string": Bad("POST", DOCS, "size_bytes", document_body(size_bytes="12")),
    "size negative": Bad("POST", DOCS, "size_bytes", document_body(size_bytes=-1)),
    "size too big": Bad("POST", DOCS, "size_bytes", document_body(size_bytes=2**63)),
    "filename as number": Bad("POST", DOCS, "filename", document_body(filename=7)),
    "filename with NUL": Bad("POST", DOCS, "filename", document_body(filename="a\x00b.pdf")),
    "metadata not object": Bad("POST", DOCS, "metadata", document_body(metadata=[1, 2])),
    "metadata over 64 KiB": Bad("POST", DOCS, "metadata", document_body(metadata=OVERSIZED)),
    "metadata 11 deep": Bad("POST", DOCS, "metadata", document_body(metadata=_nested(11))),
    "metadata with NUL": Bad("POST", DOCS, "metadata", document_body(metadata={"a": "\x00"})),
    "metadata NaN": Bad("POST", DOCS, "metadata", raw=json.dumps(document_body())[:-1]
                        + ', "metadata": {"ratio": NaN}}'),
    "s3_key empty": Bad("POST", DOCS, "s3_key", document_body(s3_key="")),
    "s3_key too long": Bad("POST", DOCS, "s3_key", document_body(s3_key="k" * 1025)),
    "status on create": Bad("POST", DOCS, "status", document_body(status="completed")),
    "embedding short": Bad("POST", DOCS, "embedding", document_body(embedding=[0.5] * 1023)),
    "embedding long": Bad("POST", DOCS, "embedding", document_body(embedding=[0.5] * 1025)),
    "embedding strings": Bad(
        "POST", DOCS, "embedding", document_body(embedding=["0.5"] * EMBEDDING_DIMENSIONS)
    ),
    "embedding NaN": Bad("POST", DOCS, "embedding", raw=_raw_document(_raw_numbers("NaN"))),
    "embedding Infinity": Bad(
        "POST", DOCS, "embedding", raw=_raw_document(_raw_numbers("Infinity"))
    ),
    "embedding -Infinity": Bad(
        "POST", DOCS, "embedding", raw=_raw_document(_raw_numbers("-Infinity"))
    ),
    "embedding beyond float32": Bad(
        "POST", DOCS, "embedding", document_body(embedding=[1e39] * EMBEDDING_DIMENSIONS)
    ),
    "embedding length overflows": Bad(
        "POST", DOCS, "embedding", document_body(embedding=[1e30] * EMBEDDING_DIMENSIONS)
    ),
    "embedding all zeros": Bad(
        "POST", DOCS, "embedding", document_body(embedding=[0] * EMBEDDING_DIMENSIONS)
    ),
    "body not JSON": Bad("POST", DOCS, "body", raw="{not json"),
    # PATCH /documents/{id}
    "patch status outside set": Bad("PATCH", ONE, "status", {"status": "archived"}),
    "patch status null": Bad("PATCH", ONE, "status", {"status": None}),
    "patch nothing": Bad("PATCH", ONE, "nothing to update", {}),
    "patch unknown field": Bad("PATCH", ONE, "filename", {"filename": "renamed.pdf"}),
    "patch metadata deep": Bad("PATCH", ONE, "metadata", {"metadata": _nested(11)}),
    "patch embedding NaN": Bad("PATCH", ONE, "embedding", raw='{"embedding": '
                               + _raw_numbers("NaN") + "}"),
    "patch malformed uuid": Bad("PATCH", f"{DOCS}/not-a-uuid", "document_id", {"status": "failed"}),
    "delete malformed uuid": Bad("DELETE", f"{DOCS}/12345", "document_id"),
    "restore malformed uuid": Bad("POST", f"{DOCS}/xyz/restore", "document_id"),
    # POST /documents/search
    "k zero": Bad("POST", SEARCH, "k", {"embedding": VECTOR, "k": 0}),
    "k 101": Bad("POST", SEARCH, "k", {"embedding": VECTOR, "k": 101}),
    "k string": Bad("POST", SEARCH, "k", {"embedding": VECTOR, "k": "5"}),
    "k float": Bad("POST", SEARCH, "k", {"embedding": VECTOR, "k": 5.5}),
    "search no embedding": Bad("POST", SEARCH, "embedding", {"k": 5}),
    "search short embedding": Bad("POST", SEARCH, "embedding", {"embedding": [1.0, 0.0]}),
    "search Infinity": Bad("POST", SEARCH, "embedding", raw='{"embedding": '
                           + _raw_numbers("Infinity") + "}"),
    "search zero vector": Bad("POST", SEARCH, "embedding", {"embedding": [0.0] * 1024}),
    "search unknown filter": Bad(
        "POST", SEARCH, "owner", {"embedding": VECTOR, "filters": {"owner": "x"}}
    ),
    "search bad status filter": Bad(
        "POST", SEARCH, "status", {"embedding": VECTOR, "filters": {"status": "gone"}}
    ),
    # GET /documents query parameters
    "list bad status": Bad("GET", DOCS, "status", params={"status": "gone"}),
    "list metadata not JSON": Bad("GET", DOCS, "metadata", params={"metadata": "{dept"}),
    "list metadata array": Bad("GET", DOCS, "metadata", params={"metadata": "[1]"}),
    "list metadata NaN": Bad("GET", DOCS, "metadata", params={"metadata": '{"a": NaN}'}),
    "list metadata deep": Bad(
        "GET", DOCS, "metadata", params={"metadata": json.dumps(_nested(11))}
    ),
    "list content_type NUL": Bad("GET", DOCS, "content_type", params={"content_type": "a\x00"}),
    "list bad date": Bad("GET", DOCS, "created_after", params={"created_after": "yesterday"}),
    "list limit 0": Bad("GET", DOCS, "limit", params={"limit": 0}),
    "list limit huge": Bad("GET", DOCS, "limit", params={"limit": 10**6}),
    "list bad cursor": Bad("GET", DOCS, "cursor", params={"cursor": "bm90LWEtY3Vyc29y"}),
    "get malformed uuid": Bad("GET", f"{DOCS}/not-a-uuid", "document_id"),
    "get include_deleted not bool": Bad("GET", ONE, "include_deleted",
                                        params={"include_deleted": "maybe"}),
    # Users and the audit log
    "user unknown field": Bad("POST", f"{API}/users", "is_superuser",
                              {"email": "new@example.org", "is_superuser": True}),
    "user bad email": Bad("POST", f"{API}/users", "email", {"email": "not-an-email"}),
    "user bad role": Bad("POST", f"{API}/users", "role",
                         {"email": "r@example.org", "role": "root"}),
    "user role not string": Bad("POST", f"{API}/users", "role",
                                {"email": "r@example.org", "role": ["admin"]}),
    "user name with NUL": Bad("POST", f"{API}/users", "full_name",
                              {"email": "n@example.org", "full_name": "A\x00"}),
    "user empty idp id": Bad("POST", f"{API}/users", "external_idp_id",
                             {"email": "i@example.org", "external_idp_id": ""}),
    "user malformed uuid": Bad("GET", f"{API}/users/nope", "user_id"),
    "audit bad resource_id": Bad("GET", f"{API}/audit-logs", "resource_id",
                                 params={"resource_id": "nope"}),
    "audit bad user_id": Bad("GET", f"{API}/audit-logs", "user_id", params={"user_id": "1"}),
    "audit action NUL": Bad("GET", f"{API}/audit-logs", "action", params={"action": "\x00"}),
    "audit bad time": Bad("GET", f"{API}/audit-logs", "created_before",
                          params={"created_before": "soon"}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_bad_input_is_refused_naming_the_field_and_writes_nothing(
    api: Api, tenants: Tenants, case: Bad
) -> None:
    document = await api.create_document(tenants.admin, metadata={"kept": True})
    path = case.path.replace("{doc}", document["id"])
    before = await api.counts()
    options: dict[str, Any] = {"params": case.params}
    if case.raw is not None:
        options["content"] = case.raw
        options["headers"] = {**tenants.admin.headers, "Content-Type": "application/json"}
    else:
        options["headers"] = tenants.admin.headers
        if case.body is not None:
            options["json"] = case.body
    response = await api.client.request(case.method, path, **options)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert case.field in error["message"], error
    assert "Traceback" not in response.text
    assert await api.counts() == before
    unchanged = await api.client.get(f"{DOCS}/{document['id']}", headers=tenants.admin.headers)
    assert unchanged.json() == document


async def test_metadata_at_the_limits_is_accepted(api: Api, tenants: Tenants) -> None:
    filler = METADATA_MAX_BYTES - len(json.dumps({"blob": ""}, separators=(",", ":")))
    at_size = {"blob": "x" * filler}
    created = await api.create_document(tenants.admin, metadata=at_size)
    assert created["metadata"] == at_size
    deepest = await api.create_document(tenants.admin, metadata=_nested(10))
    assert deepest["metadata"] == _nested(10)
    unicode = {"name": "Zoë Ωmega 患者"}
    assert (await api.create_document(tenants.admin, metadata=unicode))["metadata"] == unicode
