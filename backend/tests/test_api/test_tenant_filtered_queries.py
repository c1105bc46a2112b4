"""Every query the services send on the request path names its tenant (issue 22, Citus).

RLS keeps tenants apart but does not prune shards: on Citus, only the explicit
`WHERE tenant_id = …` (or a join on it to a table so filtered) routes a query to one shard.
This drives every /api/v1 route over HTTP, captures each statement the app's runtime engine
sends, and checks each with PostgreSQL's own parser (testkit/tenant_filter.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.database import citus
from testkit.factories import give_tenant_key
from testkit.tenant_filter import distribution_columns, unpinned_tables
from tests.test_api.conftest import API, Api, Tenants, embedding_towards

# Routes with no tenant (liveness, readiness, the dev issuer's keys).
UNSCOPED_PREFIXES = (f"{API}/health", f"{API}/.well-known", f"{API}/jwks.json", f"{API}/dev")


@pytest.fixture
def api(content_client: httpx.AsyncClient, admin_sessions: async_sessionmaker[AsyncSession]) -> Api:
    """The API helpers over an app that stores content (the content routes are driven too)."""
    return Api(content_client, admin_sessions)


async def _drive_every_route(api: Api, tenants: Tenants) -> set[tuple[str, str]]:
    """Call every tenant route once or more; return the (method, path template) pairs called."""
    admin, client = tenants.admin.headers, api.client
    called: set[tuple[str, str]] = set()

    async def call(method: str, template: str, expect: int, **kwargs: Any) -> Any:
        path = template.format(**kwargs.pop("ids", {}))
        headers = kwargs.pop("headers", admin)
        response = await client.request(method, f"{API}{path}", headers=headers, **kwargs)
        assert response.status_code == expect, (method, path, response.text)
        called.add((method.lower(), f"{API}{template}"))
        is_json = response.headers.get("content-type", "").startswith("application/json")
        return response.json() if response.content and is_json else None

    document = await api.create_document(tenants.admin, embedding=embedding_towards(1))
    called.add(("post", f"{API}/documents"))
    ids = {"document_id": document["id"]}
    await call("GET", "/me", 200)
    await call("GET", "/documents", 200, params={"status": "processing", "limit": 1})
    listed = await call("GET", "/documents", 200, params={"limit": 1})
    if listed["next_cursor"]:
        await call("GET", "/documents", 200, params={"limit": 1, "cursor": listed["next_cursor"]})
    await call("GET", "/documents/{document_id}", 200, ids=ids)
    await call("PATCH", "/documents/{document_id}", 200, ids=ids, json={"status": "completed"})
    await call("POST", "/documents/search", 200, json={"embedding": embedding_towards(1), "k": 3})
    content = b"%PDF-1.7 tenant-filter flow"
    stored = await api.create_document(tenants.admin, size_bytes=len(content))
    called.add(("post", f"{API}/documents"))
    stored_ids = {"document_id": stored["id"]}
    await call(
        "PUT",
        "/documents/{document_id}/content",
        200,
        ids=stored_ids,
        content=content,
        headers={**admin, "Content-Type": "application/pdf"},
    )
    await call("GET", "/documents/{document_id}/content", 200, ids=stored_ids)
    await call("GET", "/ingest-jobs", 200)  # the upload queued one
    await call("POST", "/documents/search", 200, json={"query": "tenant filter flow", "k": 3})
    await call("DELETE", "/documents/{document_id}", 204, ids=ids)
    await call("POST", "/documents/{document_id}/restore", 200, ids=ids)
    user = await call(
        "POST", "/users", 201, json={"email": f"{uuid.uuid4().hex}@example.org", "role": "member"}
    )
    user_ids = {"user_id": user["id"]}
    await call("GET", "/users", 200)
    await call("GET", "/users/{user_id}", 200, ids=user_ids)
    await call("DELETE", "/users/{user_id}", 204, ids=user_ids)
    await call("POST", "/users/{user_id}/restore", 200, ids=user_ids)
    await call("GET", "/audit-logs", 200, params={"action": "document.update"})
    await call("GET", "/audit-logs/verify", 200)
    await call("GET", "/tenant/export", 200)  # everything the tenant owns, streamed
    return called


async def test_every_request_path_query_names_its_tenant(
    api: Api,
    tenants: Tenants,
    runtime_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    admin_sessions: async_sessionmaker[AsyncSession],
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    await give_tenant_key(admin_sessions, key_manager, tenants.admin.tenant.id)
    async with owner_engine.connect() as connection:
        distribution = distribution_columns(await connection.run_sync(citus.distributed_tables))
    statements: list[str] = []

    def capture(*args: Any) -> None:
        statements.append(args[2])

    event.listen(runtime_engine.sync_engine, "before_cursor_execute", capture)
    try:
        called = await _drive_every_route(api, tenants)
    finally:
        event.remove(runtime_engine.sync_engine, "before_cursor_execute", capture)

    # The flow reaches every tenant route the app serves (a new route must be added above).
    schema = api.client._transport.app.openapi()  # type: ignore[attr-defined]
    served = {
        (method, path)
        for path, operations in schema["paths"].items()
        if not path.startswith(UNSCOPED_PREFIXES)
        for method in operations
    }
    assert served - called == set(), "routes the flow does not call"
    assert len(statements) > 30
    problems = {
        statement: unpinned
        for statement in set(statements)
        if (unpinned := unpinned_tables(statement, distribution))
    }
    assert problems == {}, "\n\n".join(f"{s}\n  -> {p}" for s, p in problems.items())


def test_the_checker_flags_a_query_without_the_tenant() -> None:
    distribution = {"documents": "tenant_id", "users": "tenant_id", "tenants": "id"}
    unpinned = {
        "SELECT * FROM documents WHERE id = %(id)s": ["documents"],
        "UPDATE documents SET filename = %(f)s WHERE documents.id = %(id)s": ["documents"],
        "SELECT d.id FROM documents d JOIN users u ON u.id = d.user_id WHERE d.tenant_id = %(t)s": [
            "users"
        ],
        "SELECT * FROM documents WHERE tenant_id = %(t)s OR true": ["documents"],
        "SELECT * FROM users WHERE id IN (SELECT user_id FROM documents WHERE tenant_id = %(t)s)": [
            "users"
        ],
        "INSERT INTO documents (user_id, filename) VALUES (%(u)s, %(f)s)": ["documents"],
        "DELETE FROM documents WHERE filename = 'x'": ["documents"],
    }
    for statement, tables in unpinned.items():
        found = unpinned_tables(statement, distribution)
        assert [problem.split()[0] for problem in found] == tables, statement
    pinned = (
        "SELECT * FROM documents WHERE documents.tenant_id = %(t)s::UUID AND id = %(id)s",
        "SELECT d.id FROM documents d JOIN users u ON u.tenant_id = d.tenant_id "
        "AND u.id = d.user_id WHERE d.tenant_id = %(t)s",
        "SELECT * FROM tenants JOIN users ON tenants.id = users.tenant_id WHERE tenants.id = %(t)s",
        "UPDATE users SET full_name = %(n)s WHERE users.tenant_id = %(t)s AND users.id = %(i)s",
        "INSERT INTO documents (tenant_id, user_id) VALUES (%(t)s, %(u)s)",
        "SELECT set_config('app.current_tenant_id', %(t)s, true)",
    )
    for statement in pinned:
        assert unpinned_tables(statement, distribution) == [], statement
