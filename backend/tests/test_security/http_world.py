"""The two-tenant world the HTTP attack tests share: an attacker's tenant `a`, a victim's `b`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import admin_transaction
from app.database.vector_search import EMBEDDING_DIMENSIONS
from app.models import Document
from testkit.auth_helpers import AuthenticatedCaller
from tests.conftest import MakeCaller

DOCUMENTS = "/api/v1/documents"
USERS = "/api/v1/users"


@dataclass(frozen=True)
class Side:
    """One tenant: its admin, its member, and a document the admin registered over the API."""

    admin: AuthenticatedCaller
    member: AuthenticatedCaller
    document: dict[str, Any]
    deleted_document: dict[str, Any]

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.admin.tenant.id


@dataclass(frozen=True)
class World:
    """The attacker's tenant `a` and the victim's tenant `b`."""

    a: Side
    b: Side


def document_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "filename": f"{uuid.uuid4().hex[:8]}.pdf",
        "content_type": "application/pdf",
        "size_bytes": 1234,
        "s3_bucket": "bucket",
        "s3_key": f"keys/{uuid.uuid4().hex}.pdf",
        "metadata": {"department": "cardiology"},
    }
    body.update(overrides)
    return body


def unit(index: int) -> list[float]:
    vector = [0.0] * EMBEDDING_DIMENSIONS
    vector[index] = 1.0
    return vector


async def create_document(
    client: httpx.AsyncClient, caller: AuthenticatedCaller, **fields: Any
) -> Any:
    response = await client.post(DOCUMENTS, json=document_body(**fields), headers=caller.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def make_side(client: httpx.AsyncClient, make_caller: MakeCaller, label: str) -> Side:
    admin = await make_caller(role="admin", tenant_name=f"{label}-{uuid.uuid4().hex[:6]}")
    member = await make_caller(role="member", tenant=admin.tenant)
    document = await create_document(client, admin, embedding=unit(0))
    deleted = await create_document(
        client, admin, embedding=unit(0), metadata={"department": "gone"}
    )
    response = await client.delete(f"{DOCUMENTS}/{deleted['id']}", headers=admin.headers)
    assert response.status_code == 204, response.text
    return Side(admin, member, document, deleted)


def without_request_id(response: httpx.Response) -> dict[str, Any]:
    error = dict(response.json()["error"])
    error.pop("request_id", None)
    return error


async def stored_document(
    admin_sessions: async_sessionmaker[AsyncSession], document_id: str
) -> tuple[Any, ...]:
    """What is really stored for a document (read as the provisioning role)."""
    async with admin_transaction(admin_sessions) as session:
        row = (
            await session.execute(
                select(
                    Document.status, Document.metadata_, Document.deleted_at, Document.updated_at
                ).where(Document.id == uuid.UUID(document_id))
            )
        ).one()
    return tuple(row)


async def raw_get(
    client: httpx.AsyncClient, path: str, query: bytes, headers: dict[str, str]
) -> tuple[int, str]:
    """GET through the ASGI app directly: httpx refuses URLs over 64 KiB, attackers don't."""
    app = client._transport.app  # type: ignore[attr-defined]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body.decode()


async def add_user(
    client: httpx.AsyncClient, admin: AuthenticatedCaller, email: str
) -> httpx.Response:
    return await client.post(USERS, json={"email": email}, headers=admin.headers)
