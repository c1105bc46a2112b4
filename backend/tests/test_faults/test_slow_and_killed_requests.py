"""Over HTTP: a statement past the timeout is a 503 and a killed backend stores nothing."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.services import documents as documents_service
from tests.conftest import MakeCaller
from tests.test_faults.conftest import OneConnectionApp
from tests.test_middleware.conftest import assert_error
from tests.test_security.conftest import admin_scalar

ME = "/api/v1/me"
DOCUMENTS = "/api/v1/documents"
SEARCH = "/api/v1/documents/search"
STATEMENT_TIMEOUT_MS = 200
SEARCH_BODY = {"embedding": [1.0] * 1024}
_CONNECTION_STATE = text(
    "SELECT pg_backend_pid(), current_setting('app.current_tenant_id', true),"
    " current_setting('statement_timeout'), current_user"
)


def _create_body(s3_key: str) -> dict[str, Any]:
    return {
        "filename": "scan.pdf",
        "content_type": "application/pdf",
        "size_bytes": 1,
        "s3_bucket": "bucket",
        "s3_key": s3_key,
    }


async def test_statement_past_the_timeout_is_503_and_the_connection_returns_clean(
    one_connection_app: OneConnectionApp,
    make_caller: MakeCaller,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A search that runs pg_sleep(5) inside its request transaction is cancelled at 200 ms."""
    caller = await make_caller()
    original = documents_service.search_documents
    slept: list[bool] = []

    async def slow_search(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
        await session.execute(text("SELECT pg_sleep(5)"))
        slept.append(True)
        return await original(session, *args, **kwargs)

    async with one_connection_app(DB_STATEMENT_TIMEOUT_MS=STATEMENT_TIMEOUT_MS) as (client, engine):
        assert (await client.get(ME, headers=caller.headers)).status_code == 200
        async with engine.connect() as connection:
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        monkeypatch.setattr(documents_service, "search_documents", slow_search)
        response = await client.post(
            SEARCH, json={"embedding": [1.0] * 1024}, headers=caller.headers
        )
        error = assert_error(response, 503, "database_timeout")
        assert "time limit" in error["message"]
        assert response.headers["retry-after"] == "1"
        assert "pg_sleep" not in response.text
        assert slept == []
        # The same pooled connection, back with no tenant context and its settings intact.
        async with engine.connect() as connection:
            state = (await connection.execute(_CONNECTION_STATE)).one()
        assert state == (pid, "", f"{STATEMENT_TIMEOUT_MS}ms", "app_runtime")
        monkeypatch.setattr(documents_service, "search_documents", original)
        again = await client.post(SEARCH, json=SEARCH_BODY, headers=caller.headers)
        assert again.status_code == 200, again.text


async def test_backend_killed_mid_request_is_503_and_stores_neither_document_nor_audit_row(
    one_connection_app: OneConnectionApp,
    make_caller: MakeCaller,
    superuser: psycopg.Connection[Any],
    admin_sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pg_terminate_backend after the document and its audit row are written, before COMMIT."""
    caller = await make_caller()
    original = documents_service.create_document
    written: dict[str, Any] = {}

    async def create_then_die(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
        document = await original(session, *args, **kwargs)
        written["id"] = document.id
        written["audit_rows"] = (
            await session.execute(
                text("SELECT count(*) FROM audit_logs WHERE resource_id = :id"), {"id": document.id}
            )
        ).scalar_one()
        written["pid"] = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        killed = superuser.execute("SELECT pg_terminate_backend(%s)", (written["pid"],)).fetchone()
        assert killed == (True,)
        return document

    s3_key = f"killed/{uuid.uuid4()}.pdf"
    async with one_connection_app() as (client, engine):
        monkeypatch.setattr(documents_service, "create_document", create_then_die)
        response = await client.post(DOCUMENTS, json=_create_body(s3_key), headers=caller.headers)
        error = assert_error(response, 503, "service_unavailable")
        assert error["message"] == "the database is unavailable"
        assert written["audit_rows"] == 1  # both rows existed inside the transaction
        stored = (
            await admin_scalar(
                admin_sessions, "SELECT count(*) FROM documents WHERE s3_key = :k", {"k": s3_key}
            ),
            await admin_scalar(
                admin_sessions,
                "SELECT count(*) FROM audit_logs WHERE resource_id = :id",
                {"id": written["id"]},
            ),
        )
        assert stored == (0, 0)
        # The dead connection was thrown away: the next request reconnects and succeeds.
        monkeypatch.setattr(documents_service, "create_document", original)
        retried = await client.post(DOCUMENTS, json=_create_body(s3_key), headers=caller.headers)
        assert retried.status_code == 201, retried.text
        async with engine.connect() as connection:
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert pid != written["pid"]
