"""Read replicas (issue 22) on a real primary and streaming replica: reads go to the replica,
writes to the primary, a consistency token makes a client read its own writes, and a replica
that lags or is down is skipped."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text

from app.database import Database
from app.database.engine import build_runtime_engine, targets_for
from app.database.replicas import CONSISTENCY_HEADER, ReadRouting, Replica
from app.database.session import admin_transaction, make_sessionmaker
from app.main import create_app
from app.services.caller_cache import CallerCache
from testkit import database_harness as harness
from testkit.auth_helpers import AuthenticatedCaller, TestIssuer, create_caller
from testkit.replication import ReplicaPair, write_without_waiting
from tests.replica_database import ReplicaDatabase
from tests.test_api.conftest import document_body

DOCUMENTS = "/api/v1/documents"


@pytest.fixture
async def client(replica_database: ReplicaDatabase) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the replica pair, reads routed to the replica."""
    app = create_app(replica_database.settings, replica_database.database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def caller(replica_database: ReplicaDatabase, test_issuer: TestIssuer) -> AuthenticatedCaller:
    """A new tenant and member, committed on the primary and applied on the replica."""
    made = await create_caller(replica_database.primary.admin_sessions, test_issuer)
    await replica_database.reads.refresh()
    return made


async def _filenames(client: httpx.AsyncClient, headers: dict[str, str]) -> set[str]:
    response = await client.get(DOCUMENTS, headers=headers)
    assert response.status_code == 200, response.text
    return {item["filename"] for item in response.json()["items"]}


INSERT_DOCUMENT = (
    "INSERT INTO documents (tenant_id, user_id, s3_bucket, s3_key, filename, content_type,"
    " size_bytes) VALUES (%s, %s, 'b', gen_random_uuid()::text, %s, 'application/pdf', 1)"
)


def _insert_document(
    pair: ReplicaPair, database: str, caller: AuthenticatedCaller, name: str
) -> None:
    """A document written on the primary as the superuser, not waiting for the replica."""
    write_without_waiting(pair, database, INSERT_DOCUMENT, (caller.tenant.id, caller.user.id, name))


async def test_a_client_reads_its_own_write_and_reads_go_to_the_replica(
    replica_database: ReplicaDatabase, client: httpx.AsyncClient, caller: AuthenticatedCaller
) -> None:
    pair, headers = replica_database.pair, caller.headers
    # The caller's first request is a read: served by the replica, which can't write, so the
    # once-a-minute login stamp is written on the primary.
    assert (await client.get("/api/v1/me", headers=headers)).status_code == 200
    async with admin_transaction(replica_database.primary.admin_sessions) as session:
        stamped = await session.scalar(
            text("SELECT last_login_at FROM users WHERE id = :id"), {"id": caller.user.id}
        )
    assert stamped is not None

    with pair.replay_paused():
        created = await client.post(
            DOCUMENTS, json=document_body(filename="new.pdf"), headers=headers
        )
        assert created.status_code == 201, created.text
        token = created.headers[CONSISTENCY_HEADER]
        # Without the token: the replica serves the read, and it has not replayed the write.
        assert "new.pdf" not in await _filenames(client, headers)
        # With it: only a node that has the write may serve the read, so the primary does.
        assert "new.pdf" in await _filenames(client, {**headers, CONSISTENCY_HEADER: token})
    pair.wait_for_replay()
    await replica_database.reads.refresh()
    with pair.replay_paused():
        # A write the token does not cover, behind the paused replay: a read with the token is
        # now served by the replica (it has the token's write), so it does not see this one.
        _insert_document(pair, replica_database.name, caller, "later.pdf")
        seen = await _filenames(client, {**headers, CONSISTENCY_HEADER: token})
    assert "new.pdf" in seen
    assert "later.pdf" not in seen


async def test_a_replica_lagging_past_the_bound_is_skipped(
    replica_database: ReplicaDatabase, client: httpx.AsyncClient, caller: AuthenticatedCaller
) -> None:
    pair, reads = replica_database.pair, replica_database.reads
    with pair.replay_paused():
        _insert_document(pair, replica_database.name, caller, "lag.pdf")
        await reads.refresh()
        assert "lag.pdf" not in await _filenames(client, caller.headers)  # within the bound
        deadline = time.monotonic() + 10
        while reads.replicas[0].lag_seconds <= reads.max_lag_seconds:
            assert time.monotonic() < deadline, "the paused replica never counted as lagging"
            await asyncio.sleep(0.2)
            await reads.refresh()
        assert reads.choose() is None
        assert "lag.pdf" in await _filenames(client, caller.headers)  # the primary serves
    pair.wait_for_replay()
    await reads.refresh()
    assert reads.choose() is reads.replicas[0]


async def test_a_caller_refused_on_the_primary_is_refused_by_a_replica_that_lags(
    replica_database: ReplicaDatabase, caller: AuthenticatedCaller
) -> None:
    # The caller check runs on the primary (with the caller cache's counter, which is the
    # primary's), so a suspension the replica has not replayed is refused at once.
    pair = replica_database.pair
    app = create_app(replica_database.settings, replica_database.database)
    async with app.router.lifespan_context(app):  # the listener up: the cache serves
        cache: CallerCache = app.state.caller_cache
        deadline = time.monotonic() + 30
        while not cache.listening:
            assert time.monotonic() < deadline, "the caller listener never came up"
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client:
            with pair.replay_paused():
                _insert_document(pair, replica_database.name, caller, "unreplayed.pdf")
                for _ in range(2):  # looked up, then served from the cache
                    # Not seen: the replica serves the read.
                    assert "unreplayed.pdf" not in await _filenames(client, caller.headers)
                assert len(cache) == 1
                write_without_waiting(
                    pair,
                    replica_database.name,
                    "UPDATE tenants SET status = 'suspended' WHERE id = %s",
                    (caller.tenant.id,),
                )
                refused = await client.get(DOCUMENTS, headers=caller.headers)
                assert refused.status_code == 403, refused.text
            pair.wait_for_replay()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_replica_that_is_down_is_skipped(
    replica_database: ReplicaDatabase, caller: AuthenticatedCaller
) -> None:
    settings = replica_database.settings
    down_url = replica_database.primary.migrated_db.owner_url.set(
        host="127.0.0.1", port=_closed_port(), query={}
    )
    engine = build_runtime_engine(targets_for(down_url, harness.RUNTIME_PASSWORD), settings)
    down = Replica("replica (down)", engine, make_sessionmaker(engine))
    reads = ReadRouting(replica_database.database.engine, [down], max_lag_seconds=1.0)
    database = Database(
        replica_database.database.targets,
        replica_database.database.engine,
        replica_database.database.sessions,
        reads,
    )
    app = create_app(settings, database)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        # A check finds it down: reads go to the primary.
        await reads.refresh()
        assert down.up is False
        assert reads.choose() is None
        assert (await client.get(DOCUMENTS, headers=caller.headers)).status_code == 200
        # Went down after the last check: the request that finds out is served by the primary.
        down.up, down.lag_seconds = True, 0.0
        reads._checked_at = time.monotonic() + 60  # no background check to set it right first
        assert (await client.get(DOCUMENTS, headers=caller.headers)).status_code == 200
        assert down.up is False
    await engine.dispose()


async def test_a_token_is_bound_to_its_tenant_and_cannot_be_forged(
    replica_database: ReplicaDatabase,
    client: httpx.AsyncClient,
    caller: AuthenticatedCaller,
    test_issuer: TestIssuer,
) -> None:
    created = await client.post(DOCUMENTS, json=document_body(), headers=caller.headers)
    token = created.headers[CONSISTENCY_HEADER]
    other = await create_caller(replica_database.primary.admin_sessions, test_issuer)
    for headers in (
        {**other.headers, CONSISTENCY_HEADER: token},  # another tenant's token
        {**caller.headers, CONSISTENCY_HEADER: token[:-2] + ("AA" if token[-2:] != "AA" else "BB")},
        {**caller.headers, CONSISTENCY_HEADER: "not-a-token"},
    ):
        response = await client.get(DOCUMENTS, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["message"].startswith(CONSISTENCY_HEADER)
    # A read carries no token; a failed write neither.
    listed = await client.get(DOCUMENTS, headers=caller.headers)
    assert CONSISTENCY_HEADER not in listed.headers
    refused = await client.post(
        DOCUMENTS, json=document_body(size_bytes=-1), headers=caller.headers
    )
    assert refused.status_code == 422
    assert CONSISTENCY_HEADER not in refused.headers
