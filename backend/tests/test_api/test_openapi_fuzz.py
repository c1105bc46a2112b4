"""The OpenAPI document, and schemathesis against it: no 5xx, responses as documented.

Schemathesis generates requests from the app's own /openapi.json (valid ones and, in negative
mode, ones that break the schema) and sends them in-process to a fresh app that runs its own
lifespan (so its database pool lives on schemathesis' event loop). Half of the cases that take
a document or user id are pointed at a real row, so changes and restores reach the database.
The run is bounded (few examples per operation, derandomized) to stay well under a minute.
"""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import Settings
from app.main import create_app
from tests.test_api.conftest import Api, Tenants, embedding_towards

WHOLE_RESPONSE_DEADLINE_SECONDS = 120
EXAMPLES_PER_OPERATION = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 8}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


async def test_every_route_has_a_summary_and_every_body_an_example(
    client: Any, tenants: Tenants
) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    operations = _operations(document)
    assert len(operations) >= 16
    for method, path, operation in operations:
        assert operation.get("summary"), (method, path)
        assert operation.get("description"), (method, path)
        if "requestBody" in operation:
            content = operation["requestBody"]["content"]
            if "application/json" in content:
                schema = _resolve(document, content["application/json"]["schema"])
                assert schema.get("examples"), (method, path)
            else:  # raw bytes (document content): an example of them
                assert all(media.get("example") for media in content.values()), (method, path)
        if path.startswith("/api/v1/") and "/health" not in path and "/dev/" not in path:
            # Every error the API sends has the one documented error body.
            for status in ("401", "403"):
                assert status in operation["responses"], (method, path, status)
            for status, documented in operation["responses"].items():
                if status.startswith(("4", "5")):
                    body = documented["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/ErrorResponse"}, (
                        method,
                        path,
                        status,
                    )


async def test_the_request_examples_are_accepted(client: Any, tenants: Tenants) -> None:
    document = (await client.get("/openapi.json")).json()
    headers = tenants.admin.headers
    created = None
    for method, path, operation in _operations(document):
        if "requestBody" not in operation or "{" in path:
            continue
        schema = _resolve(
            document, operation["requestBody"]["content"]["application/json"]["schema"]
        )
        response = await client.request(method, path, json=schema["examples"][0], headers=headers)
        assert response.status_code in {200, 201}, (method, path, response.text)
        if path.endswith("/documents"):
            created = response.json()
    assert created is not None
    patch_schema = _resolve(document, document["components"]["schemas"]["DocumentUpdate"])
    patched = await client.patch(
        f"/api/v1/documents/{created['id']}", json=patch_schema["examples"][0], headers=headers
    )
    assert patched.status_code == 200, patched.text


@pytest.fixture
async def fuzz_document(api: Api, tenants: Tenants) -> dict[str, Any]:
    """A document of tenant A that fuzzed PATCH, DELETE and restore requests can reach."""
    return await api.create_document(tenants.admin, embedding=embedding_towards(1))


@pytest.mark.parametrize("mode", list(EXAMPLES_PER_OPERATION), ids=str)
def test_schemathesis_finds_no_server_error(
    settings: Settings, tenants: Tenants, fuzz_document: dict[str, Any], mode: GenerationMode
) -> None:
    app = create_app(settings)  # its own database pool, opened by the lifespan schemathesis runs
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {**tenants.admin.headers, "User-Agent": "schemathesis"}
    real_ids = {
        "document_id": fuzz_document["id"],
        "user_id": str(tenants.member.user.id),
    }
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if "/dev/" in operation.path or "/health/" in operation.path:
            continue
        tested += 1

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION[mode],
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode), real=st.booleans())
        def exercise(case: Any, real: bool) -> None:
            if real and case.path_parameters:
                for name, value in real_ids.items():
                    if name in case.path_parameters:
                        case.path_parameters[name] = value
            # The ASGI transport's read timeout is a deadline on the whole body, not on the gap
            # between bytes as over HTTP. GET /tenant/export streams every object the tenant
            # holds (one key unwrap and one object read each, in turn), and by this point in the
            # suite tenant A holds the content of every earlier test: in two of three full runs
            # it passed the 10 s default and was reported as a failure with no 5xx. This test
            # looks for 5xx answers; durations are measured in benchmarks.
            response = case.call(headers=headers, timeout=WHOLE_RESPONSE_DEADLINE_SECONDS)
            case.validate_response(response, checks=CHECKS, headers=headers)

        exercise()
    assert tested >= 14
