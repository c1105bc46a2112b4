"""GET /tenant/export cannot take the pool from other tenants (issue 20's security finding).

An export streams from a transaction (one pooled connection) of its own, outside the request
limits, for as long as its client reads. These tests hold exports open with a client that
reads nothing: the request is sent straight to the ASGI app, whose sends of body chunks block
until the client reads, exactly as TCP flow control blocks them in a real server once the
socket's buffers are full (a small archive would otherwise fit in them). The database, the
object store and the KMS are the run's real servers; each app has a small pool of its own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.api import deps
from app.api.v1 import tenant_export as tenant_export_api
from app.content.backends import ContentBackends
from app.core.config import Settings
from app.core.errors import ServiceUnavailableError
from app.database import Database
from app.database.engine import build_runtime_engine, targets_for
from app.database.session import admin_transaction, make_sessionmaker
from app.main import create_app
from app.models import AuditLog
from testkit import database_harness as harness
from testkit.auth_helpers import AuthenticatedCaller
from tests.conftest import MakeCaller, MigratedDatabase

EXPORT = "/api/v1/tenant/export"
ME = "/api/v1/me"
TAR_END = bytes(1024)
SETTLE_SECONDS = 30  # how long a test waits for what must happen; a hang fails, never stalls


def _rate_limited(reason: str) -> float:
    return REGISTRY.get_sample_value("rate_limited_requests_total", {"reason": reason}) or 0.0


class StalledExport:
    """GET /tenant/export from a client that reads nothing until `read()`.

    The status line and complete (non-streamed) bodies go through; a streamed chunk's send
    blocks until the client reads. `disconnect()` hangs up as a client would.
    """

    def __init__(self, app: FastAPI, caller: AuthenticatedCaller) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.complete = False
        self.answered = asyncio.Event()  # a status line was sent
        self.waiting = asyncio.Event()  # a streamed chunk waits for the client
        self._reading = asyncio.Event()
        self._hung_up = asyncio.Event()
        self._requested = False
        headers = [(b"host", b"testserver")]
        headers += [(k.lower().encode(), v.encode()) for k, v in caller.headers.items()]
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": EXPORT,
            "raw_path": EXPORT.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": {},
            "extensions": {},
        }
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._hung_up.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            self.answered.set()
            return
        if message.get("more_body", False):
            self.waiting.set()
            await self._reading.wait()  # the client's receive window is full until it reads
        self.body += message.get("body", b"")
        self.complete = self.complete or not message.get("more_body", False)

    async def started(self) -> int:
        """The status line's code, once sent."""
        await asyncio.wait_for(self.answered.wait(), SETTLE_SECONDS)
        assert self.status is not None
        return self.status

    async def stalled(self) -> None:
        """Wait until the export is streaming and blocked on its client."""
        assert await self.started() == 200, bytes(self.body)
        await asyncio.wait_for(self.waiting.wait(), SETTLE_SECONDS)

    def read(self) -> None:
        """From now on the client reads everything."""
        self._reading.set()

    def disconnect(self) -> None:
        """The client hangs up."""
        self._hung_up.set()

    async def finished(self) -> None:
        """Wait until the app is done with the request (it returned)."""
        await asyncio.wait_for(asyncio.shield(self.task), SETTLE_SECONDS)

    def error(self) -> dict[str, Any]:
        """The JSON error body sent."""
        error: dict[str, Any] = json.loads(self.body)["error"]
        return error


AppOnTheRunsServers = Callable[..., AbstractAsyncContextManager[tuple[FastAPI, AsyncEngine]]]
"""`async with export_app(pool_size=3, **settings) as (app, engine)`."""


@pytest.fixture
def export_app(
    settings: Settings, migrated_db: MigratedDatabase, content_backends: ContentBackends
) -> AppOnTheRunsServers:
    """Makes an app on the run's servers with a pool of its own: `pool_size` connections (no
    overflow), a short pool timeout, and the settings given."""

    @asynccontextmanager
    async def app_on_the_runs_servers(
        *, pool_size: int = 3, **overrides: Any
    ) -> AsyncIterator[tuple[FastAPI, AsyncEngine]]:
        app_settings = settings.model_copy(update={"DB_POOL_TIMEOUT_SECONDS": 1.0, **overrides})
        targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
        engine = build_runtime_engine(targets, app_settings, pool_size=pool_size, max_overflow=0)
        database = Database(targets=targets, engine=engine, sessions=make_sessionmaker(engine))
        try:
            yield create_app(app_settings, database, content=content_backends), engine
        finally:
            await engine.dispose()

    return app_on_the_runs_servers


@asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def stalled() -> Iterator[list[StalledExport]]:
    """Exports a test opened: their clients read (and the apps finish them) at the end."""
    opened: list[StalledExport] = []
    yield opened
    for export in opened:
        export.read()
        export.task.cancel()


async def _export_audit_rows(
    admin_sessions: async_sessionmaker[AsyncSession], caller: AuthenticatedCaller
) -> int:
    async with admin_transaction(admin_sessions) as session:
        count = await session.scalar(
            select(func.count()).where(
                AuditLog.tenant_id == caller.tenant.id, AuditLog.action == "tenant.export"
            )
        )
    return int(count or 0)


async def _exports_fully(client: httpx.AsyncClient, caller: AuthenticatedCaller) -> None:
    answer = await client.get(EXPORT, headers=caller.headers)
    assert answer.status_code == 200, answer.text
    assert answer.content.endswith(TAR_END)


async def test_exports_held_open_unread_leave_other_tenants_served_and_the_pool_free(
    export_app: AppOnTheRunsServers,
    make_caller: MakeCaller,
    stalled: list[StalledExport],
) -> None:
    """A tenant admin opens six exports and reads none; another tenant's requests are served."""
    admin = await make_caller(role="admin")
    other = await make_caller(role="member")
    async with export_app(pool_size=3) as (app, engine):
        for _ in range(6):
            stalled.append(StalledExport(app, admin))
            await stalled[-1].started()
        assert [export.status for export in stalled] == [200, 429, 429, 429, 429, 429]
        await stalled[0].stalled()
        assert engine.pool.checkedout() == 1  # the one export streaming, nothing else
        async with _client(app) as client:
            requests = (client.get(ME, headers=other.headers) for _ in range(8))
            answers = await asyncio.gather(*requests)
        assert [answer.status_code for answer in answers] == [200] * 8, answers[-1].text
        assert engine.pool.checkedout() == 1


async def test_a_second_export_of_the_tenant_is_429_in_any_worker_and_not_audited(
    export_app: AppOnTheRunsServers,
    admin_sessions: async_sessionmaker[AsyncSession],
    make_caller: MakeCaller,
    stalled: list[StalledExport],
) -> None:
    """Two apps on two pools stand for two worker processes: the lock is the database's."""
    admin = await make_caller(role="admin")
    refused_before = _rate_limited("tenant_export_running")
    async with (
        export_app() as (first_worker, _engine),
        export_app() as (second_worker, _other_engine),
    ):
        stalled.append(StalledExport(first_worker, admin))
        await stalled[0].stalled()
        for worker in (first_worker, second_worker):
            async with _client(worker) as client:
                refused = await client.get(EXPORT, headers=admin.headers)
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "10"
            error = refused.json()["error"]
            assert error["code"] == "too_many_requests"
            assert "an export of your tenant is already being streamed" in error["message"]
        assert _rate_limited("tenant_export_running") == refused_before + 2
        assert await _export_audit_rows(admin_sessions, admin) == 1  # the streaming one only
        stalled[0].read()
        await stalled[0].finished()
        assert stalled[0].complete
        assert stalled[0].body.endswith(TAR_END)
        async with _client(second_worker) as client:
            await _exports_fully(client, admin)


async def test_exports_are_capped_per_worker_whoever_s_they_are(
    export_app: AppOnTheRunsServers,
    make_caller: MakeCaller,
    stalled: list[StalledExport],
) -> None:
    admins = [await make_caller(role="admin") for _ in range(3)]
    busy_before = _rate_limited("export_concurrency")
    async with export_app(pool_size=4, TENANT_EXPORT_MAX_CONCURRENT=2) as (app, engine):
        for admin in admins[:2]:
            stalled.append(StalledExport(app, admin))
            await stalled[-1].stalled()
        third = StalledExport(app, admins[2])
        stalled.append(third)
        assert await third.started() == 429
        await third.finished()
        assert third.headers["retry-after"] == "10"
        assert third.error()["message"].startswith("exports are busy: 2 tenant exports")
        assert _rate_limited("export_concurrency") == busy_before + 1
        assert engine.pool.checkedout() == 2
        stalled[0].read()
        await stalled[0].finished()
        async with _client(app) as client:
            await _exports_fully(client, admins[2])


async def test_an_export_whose_client_stops_reading_is_ended_and_frees_its_lock_and_slot(
    export_app: AppOnTheRunsServers,
    make_caller: MakeCaller,
    stalled: list[StalledExport],
) -> None:
    admin = await make_caller(role="admin")
    async with export_app(
        TENANT_EXPORT_MAX_CONCURRENT=1,
        TENANT_EXPORT_IDLE_SECONDS=0.5,
    ) as (app, engine):
        stalled.append(StalledExport(app, admin))
        await stalled[0].stalled()
        await stalled[0].finished()  # ended by the app itself: the client never read
        assert not stalled[0].complete  # cut short, never a complete-looking archive
        assert engine.pool.checkedout() == 0
        async with _client(app) as client:
            await _exports_fully(client, admin)  # the tenant's lock and the one slot are free


@pytest.mark.parametrize("how", ["client_disconnects", "server_shuts_down"])
async def test_an_export_ended_midway_frees_its_connection_lock_and_slot(
    how: str,
    export_app: AppOnTheRunsServers,
    make_caller: MakeCaller,
    stalled: list[StalledExport],
) -> None:
    admin = await make_caller(role="admin")
    async with export_app(TENANT_EXPORT_MAX_CONCURRENT=1) as (
        app,
        engine,
    ):
        stalled.append(StalledExport(app, admin))
        await stalled[0].stalled()
        if how == "client_disconnects":
            stalled[0].disconnect()
            await stalled[0].finished()
        else:  # uvicorn cancels the requests still running when its shutdown times out
            stalled[0].task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stalled[0].task
        assert not stalled[0].complete
        assert engine.pool.checkedout() == 0
        async with _client(app) as client:
            await _exports_fully(client, admin)


async def test_an_export_response_dropped_before_it_is_sent_frees_its_slot(
    export_app: AppOnTheRunsServers,
    admin_sessions: async_sessionmaker[AsyncSession],
    make_caller: MakeCaller,
) -> None:
    """The handler returned the response, then the request's commit failed: never sent."""
    admin = await make_caller(role="admin")

    async def commit_fails_after_the_handler(
        request: Request,
        admitted: Any = Depends(deps._admitted, scope="function"),
    ) -> AsyncIterator[Any]:
        async with deps._caller_transaction(request, admitted) as tenant_request:
            yield tenant_request
        raise ServiceUnavailableError("the database is unavailable")

    async with export_app(TENANT_EXPORT_MAX_CONCURRENT=1) as (
        app,
        engine,
    ):
        app.dependency_overrides[deps._admin_tenant_request] = commit_fails_after_the_handler
        async with _client(app) as client:
            dropped = await client.get(EXPORT, headers=admin.headers)
        assert dropped.status_code == 503, dropped.text
        assert await _export_audit_rows(admin_sessions, admin) == 1  # the handler ran
        app.dependency_overrides.clear()
        assert engine.pool.checkedout() == 0
        async with _client(app) as client:
            await _exports_fully(client, admin)  # the one slot is free again


async def test_two_exports_started_together_one_streams_and_the_other_is_429_before_any_write(
    export_app: AppOnTheRunsServers,
    admin_sessions: async_sessionmaker[AsyncSession],
    make_caller: MakeCaller,
    stalled: list[StalledExport],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second export arrives in the window between the first one's request (audited,
    committed) and its stream's snapshot: it is refused there, before its audit row."""
    admin = await make_caller(role="admin")
    first_between_request_and_snapshot = asyncio.Event()
    second_answered = asyncio.Event()
    open_transaction = tenant_export_api.tenant_transaction
    snapshots_opened = 0

    @asynccontextmanager
    async def snapshot_held_back(
        sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID, **options: Any
    ) -> AsyncIterator[AsyncSession]:
        # Only the first export's snapshot waits: the window stays open until the second
        # export has its answer.
        nonlocal snapshots_opened
        snapshots_opened += 1
        if snapshots_opened == 1:
            first_between_request_and_snapshot.set()
            await asyncio.wait_for(second_answered.wait(), SETTLE_SECONDS)
        async with open_transaction(sessions, tenant_id, **options) as session:
            yield session

    monkeypatch.setattr(tenant_export_api, "tenant_transaction", snapshot_held_back)
    refused_before = _rate_limited("tenant_export_running")
    async with export_app() as (app, _engine):
        first = StalledExport(app, admin)
        stalled.append(first)
        await asyncio.wait_for(first_between_request_and_snapshot.wait(), SETTLE_SECONDS)
        second = StalledExport(app, admin)
        stalled.append(second)
        second_status = await second.started()
        second_answered.set()
        assert second_status == 429, "both exports of the tenant passed the check"
        await second.finished()
        await first.stalled()
        assert second.headers["retry-after"] == "10"
        assert "an export of your tenant is already being streamed" in second.error()["message"]
        assert _rate_limited("tenant_export_running") == refused_before + 1
        assert await _export_audit_rows(admin_sessions, admin) == 1  # the streaming one only
        first.read()
        await first.finished()
        assert first.complete
        assert first.body.endswith(TAR_END)
