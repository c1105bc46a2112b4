"""Per-tenant limits: a noisy tenant gets 429 + Retry-After, the others are still served."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.errors import TooManyRequestsError
from app.core.tenant_limits import CallerAdmission, TenantLimiter
from app.database import Database
from app.database.session import admin_transaction
from app.main import create_app
from app.models import User
from app.services import documents as documents_service
from tests.auth_helpers import bearer
from tests.conftest import MakeCaller
from tests.factories import make_user
from tests.test_middleware.conftest import DatabaseUse, assert_error

ME = "/api/v1/me"
SEARCH = "/api/v1/documents/search"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def _serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def _app(settings: Settings, database: Database, **limits: Any) -> FastAPI:
    return create_app(settings.model_copy(update=limits), database)


async def test_rate_limit_answers_429_with_retry_after_and_spares_other_tenants(
    settings: Settings, database: Database, make_caller: MakeCaller, database_use: DatabaseUse
) -> None:
    noisy, quiet = await make_caller(), await make_caller()
    app = _app(settings, database, TENANT_RATE_LIMIT_PER_SECOND=0.5, TENANT_RATE_LIMIT_BURST=3)
    async with _serve(app) as client:
        for _ in range(3):
            assert (await client.get(ME, headers=noisy.headers)).status_code == 200
        before = database_use.snapshot()
        refused = await client.get(ME, headers=noisy.headers)
        assert database_use.snapshot() == before  # refused before the transaction
        error = assert_error(refused, 429, "too_many_requests")
        assert "0.5 requests per second" in error["message"]
        assert int(refused.headers["retry-after"]) == error["retry_after_seconds"] == 2
        assert (await client.get(ME, headers=quiet.headers)).status_code == 200


async def test_forged_tokens_do_not_spend_the_named_tenants_budget(
    settings: Settings, database: Database, make_caller: MakeCaller, test_issuer: Any
) -> None:
    """Limits apply after verification: a bad token naming tenant A is a 401, A keeps its budget."""
    victim = await make_caller()
    forged = test_issuer.mint(tenant_id=victim.tenant.id, subject="attacker", aud="someone-else")
    app = _app(settings, database, TENANT_RATE_LIMIT_PER_SECOND=0.1, TENANT_RATE_LIMIT_BURST=1)
    async with _serve(app) as client:
        for _ in range(5):
            response = await client.get(ME, headers={"authorization": f"Bearer {forged}"})
            assert response.status_code == 401
        assert (await client.get(ME, headers=victim.headers)).status_code == 200


async def test_refused_identities_spend_their_own_budget_never_the_tenants(
    settings: Settings,
    database: Database,
    make_caller: MakeCaller,
    test_issuer: Any,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Issue 13: a signed token of a deleted user spent its tenant's budget, then got 403.

    With the tenant's burst at 3, ten requests of a deleted user and ten of a never-provisioned
    one are all refused (403, then 429 from their own budget), and the tenant's admin still gets
    all three requests of its burst.
    """
    admin = await make_caller(role="admin")
    leaver = await make_caller(tenant=admin.tenant)
    never_provisioned = bearer(test_issuer.mint(tenant_id=admin.tenant.id, subject="no-such-user"))
    app = _app(
        settings,
        database,
        TENANT_RATE_LIMIT_PER_SECOND=0.01,
        TENANT_RATE_LIMIT_BURST=3,
        TENANT_MAX_CONCURRENT_REQUESTS=1,
    )
    async with _serve(app) as client:
        async with admin_transaction(admin_sessions) as session:
            await session.execute(
                update(User).where(User.id == leaver.user.id).values(deleted_at=func.now())
            )
        for headers in (leaver.headers, never_provisioned):
            statuses = [(await client.get(ME, headers=headers)).status_code for _ in range(10)]
            assert statuses.count(403) >= 3, statuses
            assert set(statuses) == {403, 429}, statuses
            refused = await client.get(ME, headers=headers)
            assert "this identity" in assert_error(refused, 429, "too_many_requests")["message"]
        for _ in range(3):
            assert (await client.get(ME, headers=admin.headers)).status_code == 200
        assert app.state.tenant_limiter.in_flight(admin.tenant.id) == 0


async def test_an_identity_provisioned_after_a_refusal_is_charged_to_its_tenant_again(
    settings: Settings,
    database: Database,
    make_caller: MakeCaller,
    test_issuer: Any,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    admin = await make_caller(role="admin")
    subject = f"late-{uuid.uuid4()}"
    headers = bearer(test_issuer.mint(tenant_id=admin.tenant.id, subject=subject))
    app = _app(settings, database, TENANT_RATE_LIMIT_PER_SECOND=0.01, TENANT_RATE_LIMIT_BURST=2)
    async with _serve(app) as client:
        assert (await client.get(ME, headers=headers)).status_code == 403
        async with admin_transaction(admin_sessions) as session:
            await make_user(session, admin.tenant, external_idp_id=subject)
        assert (await client.get(ME, headers=headers)).status_code == 200  # rechecked at once
        # From now on its tenant pays (the 403 was given back): two requests empty its burst.
        for _ in range(2):
            assert (await client.get(ME, headers=headers)).status_code == 200
        refused = await client.get(ME, headers=admin.headers)
        assert "your tenant" in assert_error(refused, 429, "too_many_requests")["message"]


class HeldSearches:
    """Searches that block inside their request transaction until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self._changed = asyncio.Condition()

    async def enter(self) -> None:
        """Count a search as started and wait for the release."""
        async with self._changed:
            self.entered += 1
            self._changed.notify_all()
        await self.release.wait()

    async def until_entered(self, count: int) -> None:
        """Wait (at most 10 s) until `count` searches are held."""
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(lambda: self.entered >= count)


@pytest.fixture
def held_searches(monkeypatch: pytest.MonkeyPatch) -> HeldSearches:
    """Make every search wait (in its transaction) until the test releases them."""
    held = HeldSearches()
    original = documents_service.search_documents

    async def search(*args: Any, **kwargs: Any) -> Any:
        await held.enter()
        return await original(*args, **kwargs)

    monkeypatch.setattr(documents_service, "search_documents", search)
    return held


async def test_concurrency_limit_queues_briefly_then_answers_429_and_spares_others(
    settings: Settings,
    database: Database,
    make_caller: MakeCaller,
    held_searches: HeldSearches,
    database_use: DatabaseUse,
) -> None:
    noisy, quiet = await make_caller(), await make_caller()
    app = _app(settings, database, TENANT_MAX_CONCURRENT_REQUESTS=2)
    limiter = app.state.tenant_limiter = TenantLimiter(
        rate_per_second=0, burst=1, max_concurrent=2, queue_seconds=0.3
    )
    app.state.caller_admission = CallerAdmission(limiter)
    body = {"embedding": [0.5] * 1024}
    async with _serve(app) as client:
        # The first request of a minute stamps last_login_at (a row lock held to the end of the
        # request); get that done so the held searches don't queue on it.
        for caller in (noisy, quiet):
            assert (await client.get(ME, headers=caller.headers)).status_code == 200
        running = [
            asyncio.create_task(client.post(SEARCH, json=body, headers=noisy.headers))
            for _ in range(2)
        ]
        await held_searches.until_entered(2)
        assert limiter.in_flight(noisy.tenant.id) == 2
        transactions_before = database_use.transactions
        refused = await client.post(SEARCH, json=body, headers=noisy.headers)
        assert database_use.transactions == transactions_before
        error = assert_error(refused, 429, "too_many_requests")
        assert "2 requests in progress" in error["message"]
        assert refused.headers["retry-after"] == "1"
        # Another tenant is not queued behind the noisy one (its search runs once released).
        quiet_search = asyncio.create_task(client.post(SEARCH, json=body, headers=quiet.headers))
        await held_searches.until_entered(3)
        # One more of the noisy tenant waits in line and gets the first slot freed.
        queued = asyncio.create_task(client.post(SEARCH, json=body, headers=noisy.headers))
        await asyncio.sleep(0.05)
        assert limiter.in_flight(noisy.tenant.id) == 2
        held_searches.release.set()
        responses = await asyncio.gather(*running, quiet_search, queued)
    assert [r.status_code for r in responses] == [200, 200, 200, 200]
    assert limiter.in_flight(noisy.tenant.id) == limiter.in_flight(quiet.tenant.id) == 0


async def test_slot_is_released_when_the_handler_fails(
    settings: Settings, database: Database, make_caller: MakeCaller
) -> None:
    caller = await make_caller()
    app = _app(settings, database, TENANT_MAX_CONCURRENT_REQUESTS=1)
    async with _serve(app) as client:
        for _ in range(3):
            missing = await client.get(f"/api/v1/documents/{uuid.uuid4()}", headers=caller.headers)
            assert missing.status_code == 404
        assert app.state.tenant_limiter.in_flight(caller.tenant.id) == 0
        assert (await client.get(ME, headers=caller.headers)).status_code == 200


def test_token_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = TenantLimiter(rate_per_second=10, burst=5, max_concurrent=0, clock=clock)
    tenant = uuid.uuid4()

    def admitted() -> bool:
        try:
            limiter._take_token(tenant)
        except TooManyRequestsError:
            return False
        return True

    assert [admitted() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.25  # 2.5 tokens back
    assert [admitted() for _ in range(3)] == [True, True, False]
    clock.now += 60  # refills to the burst, no further
    assert sum(admitted() for _ in range(10)) == 5


def test_retry_after_says_when_the_next_token_arrives() -> None:
    clock = FakeClock()
    limiter = TenantLimiter(rate_per_second=0.25, burst=1, max_concurrent=0, clock=clock)
    tenant = uuid.uuid4()
    limiter._take_token(tenant)
    with pytest.raises(TooManyRequestsError) as caught:
        limiter._take_token(tenant)
    assert caught.value.headers == {"Retry-After": "4"}
    clock.now += 3
    with pytest.raises(TooManyRequestsError) as caught:
        limiter._take_token(tenant)
    assert caught.value.headers == {"Retry-After": "1"}


def test_idle_tenants_are_forgotten_so_state_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.core.tenant_limits._PRUNE_ABOVE", 100)
    clock = FakeClock()
    limiter = TenantLimiter(rate_per_second=10, burst=10, max_concurrent=4, clock=clock)
    for _ in range(100):
        limiter._take_token(uuid.uuid4())
    clock.now += 2  # every bucket has refilled: the same as a new one
    limiter._take_token(uuid.uuid4())
    assert len(limiter._buckets) == 1
    assert limiter._slots == {}


async def test_a_waiter_cancelled_as_its_slot_frees_leaves_cleanly() -> None:
    """Issue 13: the slot freed between a waiter's cancellation and its wake-up gave a 500.

    The hand-made queue handed the slot to the cancelled waiter's future, which then tried to
    leave a queue it had already been taken out of: ValueError '<Future cancelled> is not in
    deque'. No server: the limiter class alone, the release made while the waiter is cancelled.
    """
    limiter = TenantLimiter(rate_per_second=0, burst=1, max_concurrent=1, queue_seconds=5)
    tenant = uuid.uuid4()
    holder = limiter.admit(tenant)
    await holder.__aenter__()

    async def wait_for_a_slot() -> None:
        async with limiter.admit(tenant):
            raise AssertionError("admitted although cancelled")

    waiter = asyncio.create_task(wait_for_a_slot())
    await asyncio.sleep(0.01)  # the waiter is in line
    waiter.cancel()  # the client hangs up...
    await holder.__aexit__(None, None, None)  # ...just as the slot frees
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.in_flight(tenant) == 0
    async with asyncio.timeout(1), limiter.admit(tenant):
        assert limiter.in_flight(tenant) == 1
    assert limiter._slots == {}


async def test_many_waiters_timing_out_and_cancelled_get_429_never_another_error() -> None:
    """A crowd over the limit, short holds, timeouts and hang-ups racing slot releases."""
    limiter = TenantLimiter(rate_per_second=0, burst=1, max_concurrent=2, queue_seconds=0.02)
    tenant = uuid.uuid4()
    rng = random.Random(13)
    outcomes: list[str] = []

    async def request(hold: float) -> None:
        try:
            async with limiter.admit(tenant):
                assert limiter.in_flight(tenant) <= 2
                await asyncio.sleep(hold)
            outcomes.append("served")
        except TooManyRequestsError:
            outcomes.append("429")
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise

    tasks = []
    for _ in range(600):
        tasks.append(asyncio.create_task(request(rng.uniform(0, 0.02))))
        if rng.random() < 0.3:
            await asyncio.sleep(rng.uniform(0, 0.004))
        if rng.random() < 0.2:
            rng.choice(tasks).cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    unexpected = [r for r in results if isinstance(r, BaseException)]
    unexpected = [r for r in unexpected if not isinstance(r, asyncio.CancelledError)]
    assert unexpected == []
    assert {"served", "429"} <= set(outcomes)
    assert limiter.in_flight(tenant) == 0
    assert limiter._slots == {}
