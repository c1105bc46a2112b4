"""The database stops for 5 s under load: 503s, no hangs, recovery without a restart, no lost acks.

The test owns its own embedded server (the session's is shared with every other test), stops it
with `pg_ctl stop -m fast` while tenants write and read through the app, and starts it again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.core.config import Settings
from app.database import Database, embedded
from app.database.engine import build_engine, build_runtime_engine, targets_for
from app.database.session import admin_transaction, make_sessionmaker
from app.main import create_app
from testkit import database_harness as harness
from testkit.auth_helpers import AuthenticatedCaller, TestIssuer, create_caller

READY = "/api/v1/health/ready"
DOCUMENTS = "/api/v1/documents"
ME = "/api/v1/me"
OUTAGE_SECONDS = 5.0
TENANTS = 4
# Tight but realistic bounds, so "no hang" means "answered within the configured timeouts".
APP_SETTINGS = {
    "DB_POOL_SIZE": 4,
    "DB_MAX_OVERFLOW": 2,
    "DB_POOL_TIMEOUT_SECONDS": 2.0,
    "DB_CONNECT_TIMEOUT_SECONDS": 1,
    "DB_STATEMENT_TIMEOUT_MS": 2000,
    "TENANT_RATE_LIMIT_PER_SECOND": 0,  # limits are not under test here
    "TENANT_MAX_CONCURRENT_REQUESTS": 0,
}
# Longest a request may take: waiting for a pooled connection, then connecting, then a statement.
REQUEST_BOUND_SECONDS = 2.0 + 1 + 2.0 + 1.0


@dataclass
class OwnServer:
    """An embedded server of this test's own, with a migrated database."""

    server: embedded.EmbeddedPostgres
    owner_url: Any


@dataclass
class Outcome:
    """One request as the client saw it."""

    kind: str
    tenant_id: uuid.UUID
    started: float
    finished: float
    status: int
    body: Any
    s3_key: str | None = None


@dataclass
class Load:
    """Everything the clients saw, and the flag that stops them."""

    outcomes: list[Outcome] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[OwnServer]:
    """A throw-away embedded server, migrated to head by the non-superuser migrator."""
    server = embedded.start_embedded(tmp_path / "db", ephemeral=True)
    try:
        test_server = harness.TestServer(server.superuser_url("postgres"), embedded=server)
        harness.ensure_migrator_role(test_server)
        owner_url = harness.create_migrated_database(test_server).owner_url
        yield OwnServer(server, owner_url)
    finally:
        server.destroy()


@pytest.fixture
async def outage_app(
    own_server: OwnServer, settings: Settings
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    """The app on the test's own server, with its own pool, served in-process."""
    app_settings = settings.model_copy(update=APP_SETTINGS)
    targets = targets_for(own_server.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, app_settings)
    database = Database(targets=targets, engine=engine, sessions=make_sessionmaker(engine))
    transport = httpx.ASGITransport(app=create_app(app_settings, database))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client, app_settings
    await engine.dispose()


async def _callers(own_server: OwnServer, issuer: TestIssuer) -> list[AuthenticatedCaller]:
    engine = build_engine(own_server.owner_url, load_test_settings(), pool_size=1)
    try:
        sessions = make_sessionmaker(engine)
        return [await create_caller(sessions, issuer) for _ in range(TENANTS)]
    finally:
        await engine.dispose()


def load_test_settings() -> Settings:
    """Settings for the test's admin engine (only its timeouts are used)."""
    return Settings(ENVIRONMENT="test", **APP_SETTINGS)  # type: ignore[arg-type]


async def _request(
    client: httpx.AsyncClient, load: Load, kind: str, caller: AuthenticatedCaller, **options: Any
) -> Outcome | None:
    started = time.monotonic()
    method = "POST" if kind == "write" else "GET"
    url = DOCUMENTS if kind in {"write", "list"} else ME
    try:
        async with asyncio.timeout(REQUEST_BOUND_SECONDS):
            response = await client.request(method, url, headers=caller.headers, **options)
    except TimeoutError:
        load.hung.append(f"{kind} started at {started:.2f}")
        return None
    body = response.json()
    outcome = Outcome(kind, caller.tenant.id, started, time.monotonic(), response.status_code, body)
    load.outcomes.append(outcome)
    return outcome


async def _writer(client: httpx.AsyncClient, load: Load, caller: AuthenticatedCaller) -> None:
    sequence = 0
    while not load.stop.is_set():
        sequence += 1
        s3_key = f"{caller.tenant.id}/{sequence}"
        body = {
            "filename": f"{sequence}.pdf",
            "content_type": "application/pdf",
            "size_bytes": sequence,
            "s3_bucket": "outage",
            "s3_key": s3_key,
        }
        outcome = await _request(client, load, "write", caller, json=body)
        if outcome is not None:
            outcome.s3_key = s3_key
        await asyncio.sleep(0.01)


async def _reader(client: httpx.AsyncClient, load: Load, caller: AuthenticatedCaller) -> None:
    while not load.stop.is_set():
        await _request(client, load, "list", caller, params={"limit": 20})
        await _request(client, load, "me", caller)
        await asyncio.sleep(0.01)


async def _until_ready_is(client: httpx.AsyncClient, status: int, within: float) -> float:
    """Poll /health/ready; the time it first answered `status` (fails after `within` s)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        response = await client.get(READY)
        if response.status_code == status:
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise AssertionError(f"/health/ready did not answer {status} within {within} s")


def _served_for_the_caller(outcome: Outcome) -> bool:
    """A successful read shows only the caller's tenant."""
    if outcome.kind == "me":
        return bool(outcome.body["tenant"]["id"] == str(outcome.tenant_id))
    if outcome.kind == "list":
        prefix = f"{outcome.tenant_id}/"
        return all(item["s3_key"].startswith(prefix) for item in outcome.body["items"])
    return True


async def test_outage_under_load_is_503_then_recovers_and_loses_no_acknowledged_write(
    own_server: OwnServer,
    outage_app: tuple[httpx.AsyncClient, Settings],
    test_issuer: TestIssuer,
) -> None:
    client, _ = outage_app
    callers = await _callers(own_server, test_issuer)
    load = Load()
    clients = [
        asyncio.create_task(worker(client, load, caller))
        for caller in callers
        for worker in (_writer, _reader)
    ]
    await asyncio.sleep(1.0)

    # pg_ctl stop -m fast returns once the server is gone (after its shutdown checkpoint, which
    # can take a second or two); readiness is polled from the moment the stop begins.
    stopping = time.monotonic()
    stop = asyncio.create_task(asyncio.to_thread(own_server.server.stop))
    first_503 = await _until_ready_is(client, 503, within=10.0)
    await stop
    stopped = time.monotonic()
    assert first_503 - stopped <= 2.0
    await asyncio.sleep(max(0.0, stopping + OUTAGE_SECONDS - time.monotonic()))

    starting = time.monotonic()
    await asyncio.to_thread(own_server.server.start)
    back = await _until_ready_is(client, 200, within=5.0)
    assert back - starting <= 5.0
    await asyncio.sleep(1.5)
    load.stop.set()
    await asyncio.gather(*clients)

    assert load.hung == []
    outcomes = load.outcomes
    during = [o for o in outcomes if o.started >= stopped and o.finished <= starting]
    after = [o for o in outcomes if o.started >= back]
    assert len(during) > 20, len(during)
    assert len(after) > 20, len(after)
    # During the outage: a clear JSON 503 for every request, reads and writes alike.
    assert {o.status for o in during} == {503}
    assert {o.body["error"]["code"] for o in during} == {"service_unavailable"}
    assert {o.body["error"]["message"] for o in during} == {"the database is unavailable"}
    # Recovered without a restart: everything after readiness came back succeeds.
    assert {o.status for o in after} <= {200, 201}, sorted({o.status for o in after})
    # Nothing but success or a clear 503, at any time; no response for another tenant.
    assert {o.status for o in outcomes} <= {200, 201, 503}
    assert all(_served_for_the_caller(o) for o in outcomes if o.status == 200)

    writes = [o for o in outcomes if o.kind == "write"]
    acknowledged = {o.s3_key for o in writes if o.status == 201}
    refused = {o.s3_key for o in writes if o.status != 201}
    assert len(acknowledged) > 20, len(acknowledged)
    assert len(refused) > 20, len(refused)
    stored = await _stored_documents(own_server)
    assert set(stored) == acknowledged  # every ack is stored; no refused write is
    assert all(key.startswith(f"{tenant_id}/") for key, tenant_id in stored.items())
    assert await _audited_creates(own_server) == len(acknowledged)


async def _stored_documents(own_server: OwnServer) -> dict[str, uuid.UUID]:
    """s3_key → tenant_id of every stored document, read as the provisioning role."""
    engine = build_engine(own_server.owner_url, load_test_settings(), pool_size=1)
    try:
        async with admin_transaction(make_sessionmaker(engine)) as session:
            rows = await session.execute(
                text("SELECT s3_key, tenant_id FROM documents WHERE s3_bucket = 'outage'")
            )
            return {row.s3_key: row.tenant_id for row in rows}
    finally:
        await engine.dispose()


async def _audited_creates(own_server: OwnServer) -> int:
    engine = build_engine(own_server.owner_url, load_test_settings(), pool_size=1)
    try:
        async with admin_transaction(make_sessionmaker(engine)) as session:
            count = await session.execute(
                text("SELECT count(*) FROM audit_logs WHERE action = 'document.create'")
            )
            return int(count.scalar_one())
    finally:
        await engine.dispose()
