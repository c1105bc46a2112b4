"""The connection pool under pressure: bounded by pool_size + max_overflow, and a request that
waits too long for a connection gets a 503 with Retry-After instead of hanging."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text

from app.api.deps import Tenant
from app.core.config import Settings
from app.database import Database
from app.database.engine import build_runtime_engine, targets_for
from app.database.session import make_sessionmaker
from app.main import create_app
from testkit import database_harness as harness
from tests.conftest import MakeCaller, MigratedDatabase

APPLICATION_NAME = "tenant-docs-pool-test"


class Holds:
    """Lets a test keep a request's connection checked out until it says so."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.release = asyncio.Event()


@asynccontextmanager
async def _client_for(
    settings: Settings, migrated_db: MigratedDatabase, holds: Holds, **pool: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    # The per-tenant limits are not under test here (tests/test_middleware/test_tenant_limits.py):
    # on a loaded machine their 1 s queue would turn these requests into 429s.
    limits_off = {"TENANT_RATE_LIMIT_PER_SECOND": 0, "TENANT_MAX_CONCURRENT_REQUESTS": 0}
    settings = settings.model_copy(update={**limits_off, **pool})
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, settings, application_name=APPLICATION_NAME)
    database = Database(targets=targets, engine=engine, sessions=make_sessionmaker(engine))
    app = create_app(settings, database)

    async def hold(tenant: Tenant) -> dict[str, bool]:
        await tenant.session.execute(text("SELECT 1"))
        holds.holding.set()
        await holds.release.wait()
        return {"held": True}

    async def brief(tenant: Tenant) -> dict[str, bool]:
        await tenant.session.execute(text("SELECT pg_sleep(0.05)"))
        return {"held": True}

    app.add_api_route("/probe/hold", hold, methods=["GET"])
    app.add_api_route("/probe/brief", brief, methods=["GET"])
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http, database
    finally:
        await engine.dispose()


@pytest.fixture
def holds() -> Holds:
    return Holds()


@pytest.fixture
async def one_connection_client(
    settings: Settings, migrated_db: MigratedDatabase, holds: Holds
) -> AsyncIterator[httpx.AsyncClient]:
    async with _client_for(
        settings, migrated_db, holds, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT_SECONDS=0.3
    ) as (http, _database):
        yield http


async def test_a_request_that_waits_too_long_for_a_connection_gets_503_with_retry_after(
    one_connection_client: httpx.AsyncClient, make_caller: MakeCaller, holds: Holds
) -> None:
    caller = await make_caller()
    holder = asyncio.create_task(one_connection_client.get("/probe/hold", headers=caller.headers))
    await asyncio.wait_for(holds.holding.wait(), timeout=10)
    started = time.monotonic()
    # wait_for turns a hang into a failure instead of a stuck suite.
    waiting = await asyncio.wait_for(
        one_connection_client.get("/api/v1/me", headers=caller.headers), timeout=10
    )
    waited = time.monotonic() - started
    holds.release.set()
    held = await asyncio.wait_for(holder, timeout=10)
    assert waiting.status_code == 503, waiting.text
    assert waiting.headers["Retry-After"] == "1"
    assert waiting.json()["error"]["code"] == "service_unavailable"
    assert waited >= 0.3  # it did wait for the pool (DB_POOL_TIMEOUT_SECONDS), then gave up
    assert held.status_code == 200
    # The pool recovers: the next request gets the freed connection.
    after = await one_connection_client.get("/api/v1/me", headers=caller.headers)
    assert after.status_code == 200, after.text


async def _count_connections(superuser_dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(superuser_dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [APPLICATION_NAME],
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_the_pool_never_opens_more_than_pool_size_plus_max_overflow(
    settings: Settings, migrated_db: MigratedDatabase, holds: Holds, make_caller: MakeCaller
) -> None:
    caller = await make_caller()
    superuser_dsn = harness.libpq(migrated_db.superuser_url)
    checked_out: list[int] = []
    server_side: list[int] = []
    pool: Any = None
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            checked_out.append(pool.checkedout())
            server_side.append(await _count_connections(superuser_dsn))
            await asyncio.sleep(0.01)

    async with _client_for(
        settings, migrated_db, holds, DB_POOL_SIZE=2, DB_MAX_OVERFLOW=1, DB_POOL_TIMEOUT_SECONDS=30
    ) as (http, database):
        pool = database.engine.pool
        sampler = asyncio.create_task(sample())
        responses = await asyncio.gather(
            *(http.get("/probe/brief", headers=caller.headers) for _ in range(24))
        )
        done.set()
        await sampler
    assert [r.status_code for r in responses] == [200] * 24
    assert max(checked_out) == 3  # reached the bound (so this test can fail) ...
    assert max(server_side) == 3  # ... and the server never saw more connections than that
