"""The caller cache: skips the caller lookup, yet a deactivation is refused on the next request.

The app runs with its lifespan here, so its `caller_changes` listener is up (the plain
`client` fixture has no lifespan, hence no listener, hence no cache: every request there looks
its caller up). Deactivations are committed on another connection, as an operator's would be.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import event, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database import Database
from app.database.session import admin_transaction
from app.main import create_app
from app.models import Tenant, User
from app.services.caller_cache import CHANNEL, CallerCache
from app.services.callers import Caller
from testkit import database_harness as harness
from testkit.protocol_trace import traced
from tests.conftest import MakeCaller, MigratedDatabase

TRIALS = 20
HAMMERS = 4
WAIT_SECONDS = 30.0  # for the listener to come up or notice it is down (never a timing check)


async def _until(condition: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def listening_app(settings: Settings, database: Database) -> AsyncIterator[FastAPI]:
    """The app with its lifespan running, its listener up."""
    app = create_app(settings, database)
    async with app.router.lifespan_context(app):
        cache: CallerCache = app.state.caller_cache
        await _until(lambda: cache.listening, "the listener to come up")
        yield app


@pytest.fixture
async def http(listening_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=listening_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def _statements_of(
    engine: AsyncEngine, http: httpx.AsyncClient, headers: dict[str, str]
) -> tuple[int, list[str], list[str]]:
    """GET /me's status, the statements SQLAlchemy executed for it, and its round trips (the
    tenant transaction's opening goes to psycopg directly: only the trace sees it)."""
    statements: list[str] = []

    def on_statement(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", on_statement)
    try:
        with traced(engine) as trace:
            response = await http.get("/api/v1/me", headers=headers)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", on_statement)
    return response.status_code, statements, trace.round_trips()


async def test_a_cached_caller_costs_only_begin_with_context(
    http: httpx.AsyncClient, make_caller: MakeCaller, runtime_engine: AsyncEngine
) -> None:
    caller = await make_caller()
    status, first, _ = await _statements_of(runtime_engine, http, caller.headers)
    assert status == 200
    assert any("FROM users JOIN tenants" in statement for statement in first)
    status, second, trips = await _statements_of(runtime_engine, http, caller.headers)
    assert status == 200
    # BEGIN with the context, then COMMIT: nothing else.
    assert second == []
    assert len(trips) == 2, trips
    assert "Query\t \"BEGIN; SELECT set_config('app.current_tenant_id'" in trips[0]
    assert trips[1].endswith('Query\t "COMMIT"')


async def _set(admin_sessions: async_sessionmaker[AsyncSession], statement: Any) -> None:
    async with admin_transaction(admin_sessions) as session:  # commits on its own connection
        await session.execute(statement)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda c: update(User).where(User.id == c.user.id).values(deleted_at=User.created_at),
            id="user deleted",
        ),
        pytest.param(
            lambda c: update(Tenant).where(Tenant.id == c.tenant.id).values(status="suspended"),
            id="tenant suspended",
        ),
        pytest.param(
            lambda c: (
                update(Tenant).where(Tenant.id == c.tenant.id).values(deleted_at=Tenant.created_at)
            ),
            id="tenant deleted",
        ),
    ],
)
async def test_the_very_next_request_after_a_deactivation_is_refused(
    http: httpx.AsyncClient,
    listening_app: FastAPI,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
    change: Any,
) -> None:
    cache: CallerCache = listening_app.state.caller_cache
    for _ in range(5):  # a race would show as a 200 on some round
        caller = await make_caller()
        assert (await http.get("/api/v1/me", headers=caller.headers)).status_code == 200
        assert len(cache) > 0
        await _set(admin_sessions, change(caller))
        response = await http.get("/api/v1/me", headers=caller.headers)
        assert response.status_code == 403, response.text


async def test_a_role_change_and_any_tenant_column_reach_the_cache(
    http: httpx.AsyncClient,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    caller = await make_caller(role="admin")
    assert (await http.get("/api/v1/me", headers=caller.headers)).json()["user"]["role"] == "admin"
    await _set(admin_sessions, update(User).where(User.id == caller.user.id).values(role="member"))
    assert (await http.get("/api/v1/me", headers=caller.headers)).json()["user"]["role"] == "member"
    # Any tenant column counts (the trigger is generic: a lifecycle column added later too).
    await _set(
        admin_sessions,
        update(Tenant).where(Tenant.id == caller.tenant.id).values(name="renamed while cached"),
    )
    me = (await http.get("/api/v1/me", headers=caller.headers)).json()
    assert me["tenant"]["name"] == "renamed while cached"


async def test_with_the_listener_down_every_request_looks_its_caller_up(
    http: httpx.AsyncClient,
    listening_app: FastAPI,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_engine: AsyncEngine,
    migrated_db: MigratedDatabase,
) -> None:
    cache: CallerCache = listening_app.state.caller_cache
    listener = listening_app.state.caller_listener
    caller = await make_caller()
    assert (await http.get("/api/v1/me", headers=caller.headers)).status_code == 200
    _, cached, _ = await _statements_of(runtime_engine, http, caller.headers)
    assert cached == []
    # Kill the listening connection and keep it down: notifications now go unheard.
    listener.retry_seconds = 3600
    pid = listener.backend_pid
    superuser = harness.libpq(migrated_db.superuser_url)
    async with await psycopg.AsyncConnection.connect(superuser, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    await _until(lambda: not cache.listening, "the listener to notice it is down")
    status, uncached, _ = await _statements_of(runtime_engine, http, caller.headers)
    assert status == 200
    assert any("FROM users JOIN tenants" in statement for statement in uncached)
    await _set(
        admin_sessions,
        update(User).where(User.id == caller.user.id).values(deleted_at=User.created_at),
    )
    assert (await http.get("/api/v1/me", headers=caller.headers)).status_code == 403
    assert len(cache) == 0


async def test_the_triggers_notify_for_access_columns_and_not_for_the_login_stamp(
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
    migrated_db: MigratedDatabase,
) -> None:
    caller = await make_caller()
    superuser = harness.libpq(migrated_db.superuser_url)
    async with await psycopg.AsyncConnection.connect(superuser, autocommit=True) as listening:
        await listening.execute(f"LISTEN {CHANNEL}")

        async def heard() -> list[str]:
            return [n.payload async for n in listening.notifies(timeout=1.0)]

        await _set(
            admin_sessions,
            update(User).where(User.id == caller.user.id).values(last_login_at=User.created_at),
        )
        assert await heard() == []
        await _set(
            admin_sessions,
            update(User).where(User.id == caller.user.id).values(full_name="someone else"),
        )
        assert [payload.split(":")[0] for payload in await heard()] == [str(caller.tenant.id)]
        await _set(
            admin_sessions,
            update(Tenant).where(Tenant.id == caller.tenant.id).values(status="suspended"),
        )
        assert [payload.split(":")[0] for payload in await heard()] == [str(caller.tenant.id)]


def _caller(tenant_id: uuid.UUID) -> Caller:
    return Caller(tenant_id, uuid.uuid4(), "member", "a@example.com", None, "t", "active")


def _heard_up_to(cache: CallerCache, number: int) -> None:
    cache.notified(f"sync:{number}")


def test_the_cache_serves_nothing_unless_listening_and_caught_up() -> None:
    cache = CallerCache()
    tenant = uuid.uuid4()
    cache.store("sub", _caller(tenant), cache.generation)
    assert cache.get(tenant, "sub", 0) is None  # not listening: not even stored
    cache.listening_started()
    cache.store("sub", _caller(tenant), cache.generation)
    assert cache.get(tenant, "sub", 1) is None  # no mark heard yet: behind any request
    _heard_up_to(cache, 5)
    assert cache.get(tenant, "sub", 5) is not None
    assert cache.get(tenant, "sub", 6) is None  # a change numbered 6 may not have arrived
    cache.listening_stopped()
    assert cache.get(tenant, "sub", 5) is None
    cache.listening_started()
    _heard_up_to(cache, 9)
    assert cache.get(tenant, "sub", 9) is None  # whatever was missed meanwhile, nothing survives


def test_a_lookup_that_overlapped_a_notification_is_not_stored() -> None:
    cache = CallerCache()
    cache.listening_started()
    _heard_up_to(cache, 1)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    before_lookup = cache.generation
    cache.notified(f"{other}:2")  # any tenant: the lookup's answer may predate the change
    cache.store("sub", _caller(tenant), before_lookup)
    assert cache.get(tenant, "sub", 2) is None
    cache.store("sub", _caller(tenant), cache.generation)
    cache.store("sub2", _caller(other), cache.generation)
    cache.notified(f"{tenant}:3")
    assert cache.get(tenant, "sub", 3) is None
    assert cache.get(other, "sub2", 3) is not None
    cache.notified("not a payload")  # can't tell whose: everything goes
    assert len(cache) == 0


def test_entries_lapse_and_the_cache_is_bounded() -> None:
    now = [0.0]
    cache = CallerCache(max_entries=2, max_age_seconds=60, clock=lambda: now[0])
    cache.listening_started()
    _heard_up_to(cache, 1)
    tenant = uuid.uuid4()
    for subject in ("a", "b", "c"):
        cache.store(subject, _caller(tenant), cache.generation)
    assert len(cache) == 2
    assert cache.get(tenant, "a", 1) is None
    assert cache.get(tenant, "c", 1) is not None
    now[0] = 60.0
    assert cache.get(tenant, "c", 1) is None


async def _hammer(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    answers: list[tuple[float, float, int]],
    deactivated: asyncio.Event,
) -> None:
    """GET /me until refused after `deactivated` is set; records every answer.

    (After its first 403 the identity is charged to a small budget of its own, app.api.
    admission: 429s follow, so each hammer stops at its first non-200 after the commit.)
    """
    while True:
        began = time.perf_counter()
        status = (await http.get("/api/v1/me", headers=headers)).status_code
        answers.append((began, time.perf_counter(), status))
        if status != 200 and deactivated.is_set():
            return


async def test_nothing_begun_after_a_deactivation_is_served_and_the_delay_is_printed(
    http: httpx.AsyncClient,
    listening_app: FastAPI,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Requests in flight around the commit; prints the delay (run with -s to read it).

    Asserts behaviour only: every request that began after the deactivation's COMMIT returned
    is refused. The delays are printed, never asserted (docs/PERFORMANCE.md quotes them).
    """
    cache: CallerCache = listening_app.state.caller_cache
    heard_at: dict[str, float] = {}
    deliver = cache.notified

    def timed(payload: str) -> None:
        heard_at.setdefault(payload.split(":")[0], time.perf_counter())
        deliver(payload)

    cache.notified = timed  # type: ignore[method-assign]
    to_refusal: list[float] = []
    to_heard: list[float] = []
    for _ in range(TRIALS):
        caller = await make_caller()
        assert (await http.get("/api/v1/me", headers=caller.headers)).status_code == 200
        answers: list[tuple[float, float, int]] = []  # began, ended, status
        deactivated = asyncio.Event()
        hammers = [
            asyncio.create_task(_hammer(http, caller.headers, answers, deactivated))
            for _ in range(HAMMERS)
        ]
        await asyncio.sleep(0.05)
        await _set(
            admin_sessions,
            update(User).where(User.id == caller.user.id).values(deleted_at=User.created_at),
        )
        committed = time.perf_counter()
        deactivated.set()
        await asyncio.gather(*hammers)
        served = [a for a in answers if a[0] >= committed and a[2] == 200]
        assert served == [], "a request begun after the commit was served from the cache"
        first_refusal = min(ended for _, ended, status in answers if status == 403)
        to_refusal.append((first_refusal - committed) * 1000)
        to_heard.append((heard_at[str(caller.tenant.id)] - committed) * 1000)
    print(
        f"\ndeactivation -> caller cache, {TRIALS} trials, {HAMMERS} requests in flight"
        " (ms after the deactivating COMMIT returned; negative: before it returned)"
        f"\n  first 403 answered: median {statistics.median(to_refusal):.2f},"
        f" worst {max(to_refusal):.2f}"
        f"\n  notification heard by the listener: median {statistics.median(to_heard):.2f},"
        f" worst {max(to_heard):.2f}"
    )
