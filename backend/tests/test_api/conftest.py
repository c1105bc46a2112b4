"""Fixtures for HTTP tests: two tenants in every test, documents registered over HTTP, row counts.

Every API test gets `tenants`: an admin and a member of tenant A (the callers under test) and
an admin of tenant B whose document and users exist in the same database, so a leak between
tenants would show in the responses.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import admin_transaction
from app.database.vector_search import EMBEDDING_DIMENSIONS
from app.models import AuditLog, Document, User
from testkit.auth_helpers import AuthenticatedCaller
from tests.conftest import MakeCaller
from tests.own_database import database_fixtures

API = "/api/v1"


# The API tests get a database of their own: their requests commit (the app owns its
# transactions), and their hundreds of tenants and documents would otherwise change what other
# suites' query plans and approximate (HNSW) vector searches see.
(
    database_set,
    migrated_db,
    settings,
    runtime_engine,
    runtime_sessions,
    owner_engine,
    admin_sessions,
    database,
) = database_fixtures()


# These tests' embeddings live on the last axes, orthogonal to the first axes other suites
# search along: the database is shared by the whole run, and approximate (HNSW) search over
# a table crowded near the query direction would starve those suites' results.
FIRST_AXIS = EMBEDDING_DIMENSIONS - 16


def embedding_towards(
    axis: int, second_axis: int | None = None, weight: float = 0.0
) -> list[float]:
    """A unit vector along API test axis `axis`, tilted by `weight` radians to `second_axis`."""
    values = [0.0] * EMBEDDING_DIMENSIONS
    values[FIRST_AXIS + axis] = math.cos(weight)
    if second_axis is not None:
        values[FIRST_AXIS + second_axis] = math.sin(weight)
    return values


def document_body(**overrides: Any) -> dict[str, Any]:
    """A valid POST /documents body; `overrides` replace fields (a value of ... removes one)."""
    body: dict[str, Any] = {
        "filename": "discharge-summary.pdf",
        "content_type": "application/pdf",
        "size_bytes": 482113,
        "s3_bucket": "acme-phi-documents",
        "s3_key": f"2026/11/{uuid.uuid4().hex}.pdf",
        "metadata": {"department": "cardiology", "pages": 12},
    }
    for name, value in overrides.items():
        if value is ...:
            body.pop(name, None)
        else:
            body[name] = value
    return body


@dataclass
class Tenants:
    """Tenant A's admin and member, and tenant B's admin with a document of B's in the database."""

    admin: AuthenticatedCaller
    member: AuthenticatedCaller
    other: AuthenticatedCaller
    other_document: dict[str, Any]


@dataclass(frozen=True)
class RowCounts:
    """How many rows each tenant-scoped table holds (all tenants: read as app_admin)."""

    documents: int
    users: int
    audit_logs: int


class Api:
    """Small helpers over the HTTP client, so each test reads as what it checks."""

    def __init__(
        self, client: httpx.AsyncClient, admin_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        self.client = client
        self._admin_sessions = admin_sessions

    async def create_document(
        self, caller: AuthenticatedCaller, **overrides: Any
    ) -> dict[str, Any]:
        """Register a document as `caller` and return the response body (asserting 201)."""
        response = await self.client.post(
            f"{API}/documents", json=document_body(**overrides), headers=caller.headers
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def counts(self) -> RowCounts:
        """Row counts of documents, users and audit_logs across all tenants."""
        async with admin_transaction(self._admin_sessions) as session:
            documents = await session.scalar(select(func.count()).select_from(Document))
            users = await session.scalar(select(func.count()).select_from(User))
            audit_logs = await session.scalar(select(func.count()).select_from(AuditLog))
        return RowCounts(int(documents or 0), int(users or 0), int(audit_logs or 0))

    async def audit_rows(self, tenant_id: uuid.UUID, **filters: Any) -> list[AuditLog]:
        """The tenant's audit rows (oldest first), optionally filtered by column values."""
        statement = select(AuditLog).where(AuditLog.tenant_id == tenant_id)
        for column, value in filters.items():
            statement = statement.where(getattr(AuditLog, column) == value)
        async with admin_transaction(self._admin_sessions) as session:
            rows = await session.scalars(statement.order_by(AuditLog.created_at, AuditLog.id))
            return list(rows.all())

    async def all_pages(
        self, path: str, caller: AuthenticatedCaller, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Every item of a cursor-paginated listing, following next_cursor to the end."""
        items: list[dict[str, Any]] = []
        query = dict(params or {})
        while True:
            response = await self.client.get(path, params=query, headers=caller.headers)
            assert response.status_code == 200, response.text
            page = response.json()
            items.extend(page["items"])
            if page["next_cursor"] is None:
                return items
            query["cursor"] = page["next_cursor"]


@pytest.fixture
def api(client: httpx.AsyncClient, admin_sessions: async_sessionmaker[AsyncSession]) -> Api:
    """Helpers over the in-process HTTP client."""
    return Api(client, admin_sessions)


@pytest.fixture
async def tenants(make_caller: MakeCaller, api: Api) -> Tenants:
    """Two tenants: A (admin + member, under test) and B (admin, with one document)."""
    admin = await make_caller(role="admin")
    member = await make_caller(tenant=admin.tenant, role="member")
    other = await make_caller(role="admin")
    other_document = await api.create_document(
        other, embedding=embedding_towards(0), metadata={"department": "cardiology"}
    )
    return Tenants(admin, member, other, other_document)


def error_without_request_id(response: httpx.Response) -> dict[str, Any]:
    """The error body minus the per-request id, to compare two responses."""
    error = dict(response.json()["error"])
    error.pop("request_id", None)
    return error


def assert_invalid(response: httpx.Response, field: str) -> None:
    """422 whose message names `field`."""
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error", error
    assert field in error["message"], error
