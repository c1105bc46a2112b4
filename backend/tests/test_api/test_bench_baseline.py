"""The benchmark-only baseline routes (bench/baseline.py): not in the product, refused in
production, same answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings, SettingsError, load_settings
from app.database import Database
from app.database.session import admin_transaction
from app.main import create_app
from bench import baseline
from testkit.factories import make_document
from tests.conftest import MakeCaller

PRODUCTION = {
    "ENVIRONMENT": "production",
    "DATABASE_URL": "postgresql://u:p@db.example/app",
    "OIDC_ISSUER_URL": "https://login.example.org",
    "OIDC_CLIENT_ID": "tenant-docs-api",
    "CURSOR_SECRET": "a-production-cursor-secret",
    "S3_BUCKET": "tenant-docs-content",
    "AWS_REGION": "eu-west-1",
    "KMS_PROVIDER": "aws-kms",
}


def test_production_refuses_the_baseline_routes() -> None:
    # No setting turns them on: only the benchmark's own app factory mounts them.
    assert not any(name.startswith("BENCH") for name in Settings.model_fields)
    with pytest.raises(SettingsError, match="bench baseline: refused when ENVIRONMENT=production"):
        baseline.create_app(load_settings(**PRODUCTION))


def test_a_production_app_never_mounts_them_even_if_the_check_is_bypassed() -> None:
    # The product's factory has no way to mount them, whatever the settings.
    settings = load_settings(**PRODUCTION)
    app = create_app(settings)
    paths = {getattr(route, "path", "") for route in app.routes}
    assert not any(path.startswith("/bench") for path in paths)


async def test_they_are_off_by_default(client: httpx.AsyncClient, make_caller: MakeCaller) -> None:
    caller = await make_caller()
    headers = {"X-Bench-Tenant": str(caller.tenant.id), "X-Bench-User": str(caller.user.id)}
    response = await client.get("/bench/baseline/me", headers=headers)
    assert response.status_code == 404


@pytest.fixture
async def baseline_client(
    settings: Settings, database: Database
) -> AsyncIterator[httpx.AsyncClient]:
    app = baseline.create_app(settings, database)
    transport = httpx.ASGITransport(app=app)
    # The baseline engine is made in the router's lifespan, which ASGITransport doesn't run.
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
    ):
        yield http


async def test_each_baseline_route_answers_like_its_authenticated_twin(
    baseline_client: httpx.AsyncClient,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    caller = await make_caller(role="admin")
    other = await make_caller()
    async with admin_transaction(admin_sessions) as session:
        document = await make_document(session, caller.user, embedding_vector=[1.0] * 1024)
        await make_document(session, other.user, embedding_vector=[1.0] * 1024)
    baseline = {
        "X-Bench-Tenant": str(caller.tenant.id),
        "X-Bench-User": str(caller.user.id),
        # /me's twin runs the caller lookup, which finds the user by its IdP subject.
        "X-Bench-Subject": str(caller.user.external_idp_id),
    }
    search = {"embedding": [1.0] * 1024, "k": 5}
    pairs = [
        ("GET", "/me", None),
        ("GET", "/documents", None),
        ("GET", f"/documents/{document.id}", None),
        ("POST", "/documents/search", search),
    ]
    for method, path, body in pairs:
        real = await baseline_client.request(
            method, "/api/v1" + path, headers=caller.headers, json=body
        )
        twin = await baseline_client.request(
            method, "/bench/baseline" + path, headers=baseline, json=body
        )
        assert real.status_code == twin.status_code == 200, (path, real.text, twin.text)
        assert real.json() == twin.json(), path
    # Only the caller's tenant: the other tenant's document is in neither answer.
    assert [hit["document"]["id"] for hit in twin.json()["items"]] == [str(document.id)]


async def test_the_baseline_create_writes_the_document_and_its_audit_row(
    baseline_client: httpx.AsyncClient,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    caller = await make_caller()
    baseline = {
        "X-Bench-Tenant": str(caller.tenant.id),
        "X-Bench-User": str(caller.user.id),
        # /me's twin runs the caller lookup, which finds the user by its IdP subject.
        "X-Bench-Subject": str(caller.user.external_idp_id),
    }
    body = {
        "filename": "a.pdf",
        "content_type": "application/pdf",
        "size_bytes": 10,
        "s3_bucket": "b",
        "s3_key": "k/a.pdf",
    }
    response = await baseline_client.post("/bench/baseline/documents", headers=baseline, json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["filename"] == "a.pdf"
    async with admin_transaction(admin_sessions) as session:
        audit_rows = await session.scalar(
            text("SELECT count(*) FROM audit_logs WHERE resource_id = :id AND tenant_id = :t"),
            {"id": created["id"], "t": str(caller.tenant.id)},
        )
    assert audit_rows == 1


async def test_the_baseline_needs_the_tenant_and_user_headers(
    baseline_client: httpx.AsyncClient,
) -> None:
    response = await baseline_client.get("/bench/baseline/me")
    assert response.status_code == 422
    assert "X-Bench-Tenant" in response.text or "x-bench-tenant" in response.text
