"""The request's transaction: one per request, tenant-scoped, committed before the response.

Test-only routes are added to an app built like production's, so these tests exercise the
real `Tenant` / `AdminTenant` dependencies against the real database.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.api import deps
from app.api.deps import AdminTenant, Tenant
from app.api.v1 import documents as documents_api
from app.core.config import Settings
from app.core.errors import ConflictError, NotFoundError
from app.database import Database
from app.database.base import utcnow
from app.database.session import admin_transaction
from app.main import create_app
from app.models import User
from testkit import database_harness as harness
from testkit.protocol_trace import traced
from tests.conftest import MakeCaller, MigratedDatabase


def _add_probe_routes(app: FastAPI, superuser_dsn: str) -> None:
    async def rename_then_fail(tenant: Tenant) -> dict[str, str]:
        session = tenant.session
        user = await session.get(User, tenant.actor.user_id)
        assert user is not None
        user.full_name = "renamed by a failed request"
        await session.flush()
        raise ConflictError("the handler refused after writing")

    async def rename_then_lose_connection(tenant: Tenant) -> dict[str, str]:
        session = tenant.session
        user = await session.get(User, tenant.actor.user_id)
        assert user is not None
        user.full_name = "renamed, commit lost"
        await session.flush()
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        # Kill our own backend from outside: the handler returns normally, the commit fails.
        async with await psycopg.AsyncConnection.connect(superuser_dsn, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        return {"status": "this must never reach the client"}

    async def find_user(user_id: uuid.UUID, tenant: Tenant) -> dict[str, str]:
        # No explicit tenant filter on purpose: RLS alone must hide other tenants' users.
        user = (await tenant.session.scalars(select(User).where(User.id == user_id))).first()
        if user is None:
            raise NotFoundError("user not found")
        return {"id": str(user.id)}

    async def context_facts(tenant: Tenant) -> dict[str, Any]:
        context = tenant.actor
        row = (
            await tenant.session.execute(
                text(
                    "SELECT current_user AS role,"
                    " current_setting('app.current_tenant_id', true) AS tenant"
                )
            )
        ).one()
        return {
            "db_role": row.role,
            "db_tenant": row.tenant,
            "tenant_id": str(context.tenant_id),
            "user_id": str(context.user_id),
            "user_role": context.role,
            "request_id": context.request_id,
            "client_ip": context.client_ip,
            "user_agent": context.user_agent,
        }

    async def admin_only(tenant: AdminTenant) -> dict[str, str]:
        return {"role": tenant.actor.role}

    app.add_api_route("/probe/fail", rename_then_fail, methods=["POST"])
    app.add_api_route("/probe/lose-commit", rename_then_lose_connection, methods=["POST"])
    app.add_api_route("/probe/users/{user_id}", find_user, methods=["GET"])
    app.add_api_route("/probe/context", context_facts, methods=["GET"])
    app.add_api_route("/probe/admin", admin_only, methods=["GET"])


@pytest.fixture
async def probe_client(
    settings: Settings, database: Database, migrated_db: MigratedDatabase
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, database)
    _add_probe_routes(app, harness.libpq(migrated_db.superuser_url))
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 51000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def _full_name(admin_sessions: async_sessionmaker[AsyncSession], user_id: uuid.UUID) -> Any:
    async with admin_transaction(admin_sessions) as session:
        return await session.scalar(select(User.full_name).where(User.id == user_id))


async def test_request_runs_as_app_runtime_in_the_callers_tenant(
    probe_client: httpx.AsyncClient, make_caller: MakeCaller
) -> None:
    caller = await make_caller(role="admin")
    headers = {**caller.headers, "User-Agent": "probe/1.0", "X-Request-ID": "req-12345678"}
    response = await probe_client.get("/probe/context", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "db_role": "app_runtime",
        "db_tenant": str(caller.tenant.id),
        "tenant_id": str(caller.tenant.id),
        "user_id": str(caller.user.id),
        "user_role": "admin",
        "request_id": "req-12345678",
        "client_ip": "203.0.113.7",
        "user_agent": "probe/1.0",
    }


async def test_handler_error_rolls_the_transaction_back(
    probe_client: httpx.AsyncClient,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    caller = await make_caller(full_name="Original")
    response = await probe_client.post("/probe/fail", headers=caller.headers)
    assert response.status_code == 409, response.text
    assert await _full_name(admin_sessions, caller.user.id) == "Original"


async def test_failed_commit_never_reaches_the_client_as_success(
    probe_client: httpx.AsyncClient,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    # FastAPI runs the exit code of default-scoped yield dependencies *after* sending the
    # response; ours is scope="function", so the commit happens first. Had it not, this
    # would be a 200 for a write that was never stored.
    caller = await make_caller(full_name="Original")
    response = await probe_client.post("/probe/lose-commit", headers=caller.headers)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "service_unavailable"
    assert await _full_name(admin_sessions, caller.user.id) == "Original"


async def test_another_tenants_row_is_404_like_a_random_id(
    probe_client: httpx.AsyncClient, make_caller: MakeCaller
) -> None:
    caller = await make_caller()
    other = await make_caller()
    own = await probe_client.get(f"/probe/users/{caller.user.id}", headers=caller.headers)
    assert own.status_code == 200
    foreign = await probe_client.get(f"/probe/users/{other.user.id}", headers=caller.headers)
    random = await probe_client.get(f"/probe/users/{uuid.uuid4()}", headers=caller.headers)
    assert foreign.status_code == random.status_code == 404
    assert foreign.json()["error"]["message"] == random.json()["error"]["message"]


async def test_require_admin_refuses_members(
    probe_client: httpx.AsyncClient, make_caller: MakeCaller
) -> None:
    admin = await make_caller(role="admin")
    member = await make_caller(role="member", tenant=admin.tenant)
    assert (await probe_client.get("/probe/admin", headers=admin.headers)).status_code == 200
    refused = await probe_client.get("/probe/admin", headers=member.headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "this action needs the admin role"


async def test_me_uncached_costs_the_caller_lookup_after_begin_with_context(
    client: httpx.AsyncClient, make_caller: MakeCaller, runtime_engine: AsyncEngine
) -> None:
    caller = await make_caller()
    await client.get("/api/v1/me", headers=caller.headers)  # stamps last_login_at
    statements: list[str] = []
    transactions: list[object] = []

    def on_statement(*args: Any) -> None:
        statements.append(args[2])

    def on_begin(*_args: Any) -> None:
        transactions.append(object())

    sync_engine = runtime_engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", on_statement)
    event.listen(sync_engine, "begin", on_begin)
    try:
        with traced(runtime_engine) as trace:
            response = await client.get("/api/v1/me", headers=caller.headers)
    finally:
        event.remove(sync_engine, "before_cursor_execute", on_statement)
        event.remove(sync_engine, "begin", on_begin)
    assert response.status_code == 200
    # No listener runs here (no lifespan), so the caller cache is bypassed: BEGIN with the
    # tenant context (one simple query, sent to psycopg directly, so SQLAlchemy's event does
    # not see it), then the caller lookup, which reads every column /me shows, so /me sends
    # nothing of its own. (With the cache warm, only the first:
    # tests/test_auth/test_caller_cache.py.)
    assert trace.statements()[0].startswith("BEGIN; SELECT set_config('app.current_tenant_id'")
    assert len(statements) == 1, statements
    assert "FROM users JOIN tenants" in statements[0]
    assert len(transactions) == 1


async def test_me_uncached_costs_three_round_trips_begin_with_context_caller_commit(
    client: httpx.AsyncClient, make_caller: MakeCaller, runtime_engine: AsyncEngine
) -> None:
    # What the server sees, from libpq's own protocol trace of the request's connection.
    caller = await make_caller()
    await client.get("/api/v1/me", headers=caller.headers)  # stamps last_login_at
    with traced(runtime_engine) as trace:
        response = await client.get("/api/v1/me", headers=caller.headers)
    assert response.status_code == 200
    trips = trace.round_trips()
    # BEGIN and the tenant context as one simple query (psycopg's own BEGIN would be a round
    # trip of its own: app.database.tenant_context.enter_tenant), the caller lookup with /me's
    # columns, COMMIT. No SET ROLE: the role is the login (or a start-up parameter).
    assert len(trips) == 3, trips
    assert re.search(r"Query\t \"BEGIN; SELECT set_config\('app.current_tenant_id'", trips[0])
    assert trips[1].endswith("Sync")
    assert trips[-1].endswith('Query\t "COMMIT"')


async def test_last_login_is_stamped_at_most_once_a_minute(
    client: httpx.AsyncClient,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    caller = await make_caller()

    async def last_login() -> Any:
        async with admin_transaction(admin_sessions) as session:
            return await session.scalar(select(User.last_login_at).where(User.id == caller.user.id))

    assert await last_login() is None
    assert (await client.get("/api/v1/me", headers=caller.headers)).status_code == 200
    first = await last_login()
    assert first is not None
    assert (await client.get("/api/v1/me", headers=caller.headers)).status_code == 200
    assert await last_login() == first  # within the minute: not stamped again
    two_minutes_ago = utcnow() - timedelta(minutes=2)
    async with admin_transaction(admin_sessions) as session:
        user = await session.get(User, caller.user.id)
        assert user is not None
        user.last_login_at = two_minutes_ago
    assert (await client.get("/api/v1/me", headers=caller.headers)).status_code == 200
    assert await last_login() > two_minutes_ago


async def test_a_request_holding_the_stamp_lock_does_not_block_the_same_users_others(
    client: httpx.AsyncClient,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    caller = await make_caller()
    # Another transaction (as a concurrent request stamping last_login_at would) holds the
    # user's row lock for as long as this test wants: /me must not wait for it.
    async with admin_transaction(admin_sessions) as holder:
        await holder.execute(select(User.id).where(User.id == caller.user.id).with_for_update())
        response = await client.get("/api/v1/me", headers=caller.headers)
        # Without SKIP LOCKED this request would wait for the lock until lock_timeout: a 503.
        assert response.status_code == 200, response.text
    async with admin_transaction(admin_sessions) as session:
        stamped = await session.scalar(select(User.last_login_at).where(User.id == caller.user.id))
    assert stamped is None  # skipped while locked; the next request stamps it
    assert (await client.get("/api/v1/me", headers=caller.headers)).status_code == 200
    async with admin_transaction(admin_sessions) as session:
        stamped = await session.scalar(select(User.last_login_at).where(User.id == caller.user.id))
    assert stamped is not None


async def test_forbidden_callers_are_not_stamped(
    client: httpx.AsyncClient,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    caller = await make_caller()
    async with admin_transaction(admin_sessions) as session:
        await session.execute(
            text("UPDATE tenants SET status = 'suspended' WHERE id = :id"), {"id": caller.tenant.id}
        )
    assert (await client.get("/api/v1/me", headers=caller.headers)).status_code == 403
    async with admin_transaction(admin_sessions) as session:
        stamped = await session.scalar(select(User.last_login_at).where(User.id == caller.user.id))
    assert stamped is None


PUBLIC_OPERATIONS = {("get", "/api/v1/health/live"), ("get", "/api/v1/health/ready")}


async def test_every_operation_but_health_and_docs_needs_a_token(
    settings: Settings, database: Database
) -> None:
    app = create_app(settings, database)
    operations = [
        (method, path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if (method, path) not in PUBLIC_OPERATIONS
    ]
    assert ("get", "/api/v1/me") in operations
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        for method, path in operations:
            concrete = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
            response = await http.request(method.upper(), concrete)
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.json()["error"]["reason"] == "missing"
        for path in ("/api/v1/health/live", "/openapi.json", "/docs"):
            assert (await http.get(path)).status_code == 200, path


def test_the_openapi_document_declares_the_token_on_exactly_the_operations_needing_one(
    settings: Settings, database: Database
) -> None:
    # The token is checked by plain calls, not a FastAPI security dependency (issue 20), so
    # app.api.openapi_security adds the scheme: /docs keeps its Authorize button, and a client
    # generator sees which operations need a token (the test above: all but PUBLIC_OPERATIONS).
    document = create_app(settings, database).openapi()
    assert document["components"]["securitySchemes"] == {
        "HTTPBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An OIDC access token (JWT).",
        }
    }
    operations = {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    assert operations.keys() >= PUBLIC_OPERATIONS
    assert ("put", "/api/v1/documents/{document_id}/content") in operations  # StreamingActor
    for key, operation in operations.items():
        if key in PUBLIC_OPERATIONS:
            assert "security" not in operation, key
        else:
            assert operation["security"] == [{"HTTPBearer": []}], key


def _solved_nodes(dependant: Dependant) -> list[object]:
    """The calls FastAPI solves per request under `dependant`, repeats included: it walks a
    cached dependency's whole sub-tree again for every parameter that uses it."""
    return [node for sub in dependant.dependencies for node in [sub.call, *_solved_nodes(sub)]]


def test_a_tenant_route_solves_one_dependency_for_the_token_the_transaction_and_the_caller() -> (
    None
):
    # Issue 20: FastAPI charges every dependency node on every request, and walks a cached
    # dependency's sub-tree again for every parameter that uses it. So the request dependency
    # verifies and admits by plain calls (no sub-dependency, no security scheme: the OpenAPI
    # document gets the scheme from app.api.openapi_security), and a handler takes one
    # `Tenant` (session, actor, caller, settings) rather than a session and an actor apart.
    route = next(
        route
        for route in documents_api.router.routes
        if isinstance(route, APIRoute)
        and route.path == "/documents/{document_id}"
        and "GET" in route.methods
    )
    nodes = _solved_nodes(route.dependant)
    assert deps.authenticate not in nodes
    assert not [node for node in nodes if isinstance(node, SecurityBase)], nodes
    assert nodes == [deps._tenant_request], nodes
    # An admin-only route: the role check is in its one request dependency, not a node above.
    restore = next(
        route
        for route in documents_api.router.routes
        if isinstance(route, APIRoute) and route.path == "/documents/{document_id}/restore"
    )
    assert _solved_nodes(restore.dependant) == [deps._admin_tenant_request]
    # The streaming path: under the caller lookup, the admission and the token check only.
    streaming = _solved_nodes(get_dependant(path="", call=deps._streaming_actor))
    assert streaming == [deps._admitted, deps.authenticate], streaming


async def test_concurrent_requests_do_not_share_a_transaction(
    probe_client: httpx.AsyncClient, make_caller: MakeCaller
) -> None:
    callers = [await make_caller() for _ in range(3)]
    responses = await asyncio.gather(
        *(probe_client.get("/probe/context", headers=c.headers) for c in callers * 5)
    )
    for caller, response in zip(callers * 5, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["db_tenant"] == str(caller.tenant.id)


async def test_access_log_names_the_tenant_and_user(
    client: httpx.AsyncClient, make_caller: MakeCaller, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await make_caller()
    with caplog.at_level("INFO", logger="app.access"):
        response = await client.get("/api/v1/me", headers=caller.headers)
    assert response.status_code == 200
    record = next(r for r in caplog.records if r.name == "app.access")
    assert record.__dict__["tenant_id"] == str(caller.tenant.id)
    assert record.__dict__["user_id"] == str(caller.user.id)
