"""Liveness and readiness over HTTP, against the real database."""

from __future__ import annotations

import asyncio
import time

import httpx
import psycopg
import pytest

from app.core.config import Settings, load_settings
from app.database import Database, migrations
from app.database.engine import build_runtime_engine, targets_for
from app.database.session import make_sessionmaker
from app.main import create_app
from app.services import health as health_service
from app.services.health import READINESS_CACHE_SECONDS
from tests import database_harness as harness

READY = "/api/v1/health/ready"


async def test_live_answers_without_database(settings: Settings) -> None:
    app = create_app(settings, database=None)  # no database at all: live must not need one
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.get("/api/v1/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_is_200_at_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health/ready")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {
        "database": "ok",
        "vector_extension": "ok",
        "schema": "ok",
        "runtime_role": "ok",
    }


async def test_ready_is_503_naming_schema_when_behind(
    test_server: harness.TestServer,
) -> None:
    name = harness.create_database(test_server)
    url = test_server.url(name)
    try:
        migrations.upgrade(url, harness.RUNTIME_PASSWORD)
        with psycopg.connect(harness.libpq(url), autocommit=True) as conn:
            conn.execute("UPDATE alembic_version SET version_num = 'f6a7b8c9d0e1'")
        settings = load_settings(ENVIRONMENT="test", DATABASE_URL=url.render_as_string(False))
        targets = targets_for(url, harness.RUNTIME_PASSWORD)
        engine = build_runtime_engine(targets, settings, pool_size=1)
        database = Database(targets, engine, make_sessionmaker(engine))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(settings, database)),
            base_url="http://t",
        ) as client:
            response = await client.get("/api/v1/health/ready")
        await engine.dispose()
    finally:
        harness.drop_database(test_server, name)
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["schema"].startswith("behind: at f6a7b8c9d0e1")
    assert checks["database"] == "ok"


def _unreachable_database() -> Database:
    """A Database on a port nothing listens on: connecting fails fast."""
    down = load_settings(
        ENVIRONMENT="test",
        DATABASE_URL="postgresql://app_runtime:x@127.0.0.1:9/app",
        APP_RUNTIME_PASSWORD="x",
        DB_CONNECT_TIMEOUT_SECONDS=1,
    )
    targets = targets_for(down.database_url, "x")  # type: ignore[arg-type]
    engine = build_runtime_engine(targets, down)
    return Database(targets, engine, make_sessionmaker(engine))


async def test_ready_is_503_within_two_seconds_when_database_is_down(settings: Settings) -> None:
    # A port nothing listens on: the connect fails fast; a black-holed host is bounded by
    # DB_CONNECT_TIMEOUT_SECONDS and the route's own 2 s deadline.
    database = _unreachable_database()
    app = create_app(settings, database)
    started = time.monotonic()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.get("/api/v1/health/ready")
    elapsed = time.monotonic() - started
    await database.engine.dispose()
    assert response.status_code == 503
    assert response.json()["checks"]["database"] in {"unreachable", "timed out"}
    assert elapsed < 2.5


async def test_request_id_is_honoured_or_generated(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/api/v1/health/live", headers={"X-Request-ID": "abc-123-def-456"})
    assert echoed.headers["x-request-id"] == "abc-123-def-456"
    hostile = await client.get("/api/v1/health/live", headers={"X-Request-ID": "bad id\r\n<x>"})
    assert hostile.headers["x-request-id"] != "bad id\r\n<x>"
    assert len(hostile.headers["x-request-id"]) == 32


async def test_unknown_route_is_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/api/v1/health/live", "/api/v1/health/ready"])
async def test_health_routes_are_unauthenticated(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200


def test_superuser_cannot_be_reached_by_runtime_connection(migrated_db: object) -> None:
    # Sanity check on the harness itself: the runtime login really is app_runtime.
    with psycopg.connect(harness.libpq(migrated_db.runtime_url)) as conn:  # type: ignore[attr-defined]
        assert conn.execute("SELECT current_user").fetchone() == ("app_runtime",)


def _counting_readiness(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the readiness checks that reach the database (each is one connection's work)."""
    calls: list[int] = []
    original = health_service.readiness

    async def counted(database: Database) -> dict[str, str]:
        calls.append(1)
        await asyncio.sleep(0.05)  # a slow database: callers pile up while one check runs
        return await original(database)

    monkeypatch.setattr(health_service, "readiness", counted)
    return calls


async def test_a_flood_of_ready_calls_costs_one_database_check_per_second(
    settings: Settings, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: every unauthenticated /health/ready was a database round trip."""
    checks = _counting_readiness(monkeypatch)
    app = create_app(settings, database)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        started = time.monotonic()
        concurrent = await asyncio.gather(*(client.get(READY) for _ in range(50)))
        rapid = [await client.get(READY) for _ in range(50)]
        elapsed = time.monotonic() - started
    assert [r.status_code for r in concurrent + rapid] == [200] * 100
    assert len(checks) <= 1 + int(elapsed / READINESS_CACHE_SECONDS) + 1, (len(checks), elapsed)


async def test_a_database_outage_shows_within_the_cache_window(
    settings: Settings, database: Database
) -> None:
    clock = FakeClock()
    app = create_app(settings, database)
    app.state.readiness_probe = health_service.ReadinessProbe(clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.get(READY)).status_code == 200
        down = _unreachable_database()
        app.state.database = down  # the database goes away
        try:
            clock.now += READINESS_CACHE_SECONDS / 2
            assert (await client.get(READY)).status_code == 200  # still within the window
            clock.now += READINESS_CACHE_SECONDS / 2
            response = await client.get(READY)
        finally:
            await down.engine.dispose()
    assert response.status_code == 503
    assert response.json()["checks"]["database"] in {"unreachable", "timed out"}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
