"""GET /metrics (issue 21): behind METRICS_TOKEN, per route template, 429s by reason, pool and
audit timings, and no tenant, user or document id anywhere in it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi.routing import APIRoute
from prometheus_client import REGISTRY
from pydantic import SecretStr

from app.api.idempotency import IDEMPOTENT_METHODS, IdempotentRoute
from app.core import metrics
from app.core.config import Settings
from app.database import Database
from app.main import create_app
from tests.conftest import MakeCaller
from tests.test_api.conftest import API, document_body
from tests.test_middleware.conftest import assert_error

TOKEN = "scrape-token-0123456789"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")


@asynccontextmanager
async def _client(
    settings: Settings, database: Database, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update=overrides), database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_are_not_served_without_a_token_setting(
    settings: Settings, database: Database
) -> None:
    assert settings.METRICS_TOKEN is None
    async with _client(settings, database) as client:
        assert (await client.get("/metrics")).status_code == 404


async def test_metrics_answer_only_the_token(settings: Settings, database: Database) -> None:
    async with _client(settings, database, METRICS_TOKEN=SecretStr(TOKEN)) as client:
        assert_error(await client.get("/metrics"), 401, "unauthorized")
        wrong = {"Authorization": f"Bearer {TOKEN}x"}
        assert_error(await client.get("/metrics", headers=wrong), 401, "unauthorized")
        page = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    assert "# TYPE http_requests_total counter" in page.text


async def test_requests_are_counted_per_route_template_with_no_ids(
    settings: Settings, database: Database, make_caller: MakeCaller
) -> None:
    caller = await make_caller(role="admin")
    route = f"{API}/documents/{{document_id}}"
    before = _value("http_requests_total", method="GET", route=route, status="200")
    audit_before = _value("audit_insert_seconds_count")
    acquire_before = _value("db_pool_acquire_seconds_count")
    async with _client(settings, database, METRICS_TOKEN=SecretStr(TOKEN)) as client:
        created = await client.post(
            f"{API}/documents", json=document_body(), headers=caller.headers
        )
        document_id = created.json()["id"]
        for _ in range(3):
            read = await client.get(f"{API}/documents/{document_id}", headers=caller.headers)
            assert read.status_code == 200
        await client.get("/no/such/path/" + document_id)
        page = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert _value("http_requests_total", method="GET", route=route, status="200") == before + 3
    assert _value("http_requests_total", method="GET", route="unmatched", status="404") >= 1
    assert _value("audit_insert_seconds_count") >= audit_before + 1
    assert _value("db_pool_acquire_seconds_count") >= acquire_before + 4
    assert "db_pool_connections_in_use" in page.text
    assert _UUID.search(page.text) is None
    assert _HEX_ID.search(page.text) is None
    for value in (str(caller.tenant.id), str(caller.user.id), document_id, caller.user.email):
        assert value not in page.text


async def test_429s_are_counted_by_reason(
    settings: Settings, database: Database, make_caller: MakeCaller
) -> None:
    caller = await make_caller()
    before = _value("rate_limited_requests_total", reason="tenant_rate")
    limits = {"TENANT_RATE_LIMIT_PER_SECOND": 0.01, "TENANT_RATE_LIMIT_BURST": 1}
    async with _client(settings, database, **limits) as client:
        assert (await client.get(f"{API}/me", headers=caller.headers)).status_code == 200
        assert_error(
            await client.get(f"{API}/me", headers=caller.headers), 429, "too_many_requests"
        )
    assert _value("rate_limited_requests_total", reason="tenant_rate") == before + 1


async def test_search_counts_the_strategy_chosen(
    client: httpx.AsyncClient, make_caller: MakeCaller
) -> None:
    caller = await make_caller()
    embedding = [0.0] * 1024
    embedding[0] = 1.0
    created = await client.post(
        f"{API}/documents", json=document_body(embedding=embedding), headers=caller.headers
    )
    assert created.status_code == 201, created.text
    before = _value("vector_search_strategy_total", strategy="exact")
    searched = await client.post(
        f"{API}/documents/search", json={"embedding": embedding, "k": 1}, headers=caller.headers
    )
    assert searched.status_code == 200, searched.text
    assert _value("vector_search_strategy_total", strategy="exact") == before + 1


def test_job_queue_depth_is_a_gauge_per_queue_name() -> None:
    metrics.set_job_queue_depth("bench-test-queue", 7)
    assert _value("job_queue_depth", queue="bench-test-queue") == 7


def test_every_write_route_of_the_api_records_idempotency_keys(
    settings: Settings, database: Database
) -> None:
    """A new router must use IdempotentRoute, or its writes ignore Idempotency-Key."""
    app = create_app(settings, database)
    writes: list[tuple[str, str, Callable[..., Any]]] = []
    for route in app.router.routes:
        for context in getattr(route, "effective_route_contexts", lambda: [])():
            original = context.original_route
            methods = (context.methods or set()) & IDEMPOTENT_METHODS
            if context.path.startswith(API) and methods and isinstance(original, APIRoute):
                writes.append((context.path, ",".join(methods), type(original)))
    assert len(writes) >= 8
    assert [w for w in writes if w[2] is not IdempotentRoute] == []
