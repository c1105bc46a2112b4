"""GET /api/v1/me: the caller's user and tenant, and nobody else's, even under concurrency."""

from __future__ import annotations

import asyncio
import random

import httpx

from app.core.config import Settings
from app.database import Database
from app.database.engine import build_runtime_engine
from app.database.session import make_sessionmaker
from app.main import create_app
from tests.conftest import MakeCaller


async def test_me_returns_the_admin_and_their_tenant(
    client: httpx.AsyncClient, make_caller: MakeCaller
) -> None:
    admin = await make_caller(role="admin", tenant_name="Acme Clinic", email="Boss@Acme.example")
    response = await client.get("/api/v1/me", headers=admin.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "user": {
            "id": str(admin.user.id),
            "email": "boss@acme.example",
            "full_name": None,
            "role": "admin",
        },
        "tenant": {"id": str(admin.tenant.id), "name": "Acme Clinic", "status": "active"},
    }


async def test_two_users_of_one_tenant_each_see_themselves(
    client: httpx.AsyncClient, make_caller: MakeCaller
) -> None:
    first = await make_caller(role="admin")
    second = await make_caller(tenant=first.tenant)
    for caller in (first, second):
        body = (await client.get("/api/v1/me", headers=caller.headers)).json()
        assert body["user"]["id"] == str(caller.user.id)
        assert body["tenant"]["id"] == str(first.tenant.id)


async def test_concurrent_callers_of_two_tenants_over_a_small_pool_see_only_themselves(
    settings: Settings, database: Database, make_caller: MakeCaller
) -> None:
    callers = [await make_caller() for _ in range(2)]
    callers += [
        await make_caller(tenant=callers[0].tenant),
        await make_caller(tenant=callers[1].tenant),
    ]
    engine = build_runtime_engine(database.targets, settings, pool_size=2, max_overflow=0)
    small = Database(database.targets, engine, make_sessionmaker(engine))
    # 40 requests per tenant at once: the per-tenant limits (tested on their own in
    # tests/test_middleware/test_tenant_limits.py) would refuse some on a loaded machine.
    limits_off = {"TENANT_RATE_LIMIT_PER_SECOND": 0, "TENANT_MAX_CONCURRENT_REQUESTS": 0}
    app = create_app(settings.model_copy(update=limits_off), small)
    chooser = random.Random(7)
    plan = [chooser.choice(callers) for _ in range(80)]
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as http:
            responses = await asyncio.gather(
                *(http.get("/api/v1/me", headers=caller.headers) for caller in plan)
            )
    finally:
        await engine.dispose()
    for caller, response in zip(plan, responses, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["user"]["id"] == str(caller.user.id)
        assert body["user"]["email"] == caller.user.email
        assert body["tenant"]["id"] == str(caller.tenant.id)
    assert {response.json()["tenant"]["id"] for response in responses} == {
        str(callers[0].tenant.id),
        str(callers[1].tenant.id),
    }
