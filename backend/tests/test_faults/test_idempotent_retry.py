"""A write whose COMMIT is lost with its connection, retried with its Idempotency-Key (issue 21):
exactly one document, one audit row and one idempotency record, whatever happened first."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import MakeCaller
from tests.test_faults.conftest import OneConnectionApp
from tests.test_middleware.conftest import assert_error
from tests.test_security.conftest import admin_scalar

DOCUMENTS = "/api/v1/documents"


def _create_body(s3_key: str) -> dict[str, Any]:
    return {
        "filename": "scan.pdf",
        "content_type": "application/pdf",
        "size_bytes": 1,
        "s3_bucket": "bucket",
        "s3_key": s3_key,
    }


async def _stored(
    admin_sessions: async_sessionmaker[AsyncSession], s3_key: str, key: str
) -> tuple[int, int, int]:
    documents = await admin_scalar(
        admin_sessions, "SELECT count(*) FROM documents WHERE s3_key = :k", {"k": s3_key}
    )
    audit_rows = await admin_scalar(
        admin_sessions,
        "SELECT count(*) FROM audit_logs a JOIN documents d ON a.resource_id = d.id"
        " WHERE d.s3_key = :k",
        {"k": s3_key},
    )
    records = await admin_scalar(
        admin_sessions,
        "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = :key",
        {"key": key},
    )
    return int(documents), int(audit_rows), int(records)


async def test_connection_killed_at_commit_then_retry_with_the_key_writes_exactly_once(
    one_connection_app: OneConnectionApp,
    make_caller: MakeCaller,
    superuser: psycopg.Connection[Any],
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The backend is terminated when SQLAlchemy is about to send COMMIT: the answer is 503."""
    caller = await make_caller()
    key = str(uuid.uuid4())
    headers = {**caller.headers, "Idempotency-Key": key}
    s3_key = f"killed-at-commit/{uuid.uuid4()}.pdf"
    killed: list[int] = []

    def kill_at_commit(connection: Any) -> None:
        if killed:
            return
        pid = connection.connection.dbapi_connection.info.backend_pid
        # Waits (up to 5 s) until the backend has exited, so the COMMIT meets a dead connection.
        row = superuser.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()
        assert row == (True,)
        killed.append(pid)

    async with one_connection_app() as (client, engine):
        event.listen(engine.sync_engine, "commit", kill_at_commit)
        try:
            lost = await client.post(DOCUMENTS, json=_create_body(s3_key), headers=headers)
        finally:
            event.remove(engine.sync_engine, "commit", kill_at_commit)
        assert killed, "the commit hook never ran"
        assert_error(lost, 503, "service_unavailable")
        assert await _stored(admin_sessions, s3_key, key) == (0, 0, 0)
        # The client cannot know whether the write happened: it retries with the same key.
        retried = await client.post(DOCUMENTS, json=_create_body(s3_key), headers=headers)
        assert retried.status_code == 201, retried.text
        assert "idempotent-replayed" not in retried.headers  # nothing was recorded: it ran
        assert await _stored(admin_sessions, s3_key, key) == (1, 1, 1)
        # And once more, as if that answer had been lost too: a replay, still one of each.
        replayed = await client.post(DOCUMENTS, json=_create_body(s3_key), headers=headers)
        assert replayed.status_code == 201, replayed.text
        assert replayed.headers["idempotent-replayed"] == "true"
        assert replayed.json() == retried.json()
        assert await _stored(admin_sessions, s3_key, key) == (1, 1, 1)
