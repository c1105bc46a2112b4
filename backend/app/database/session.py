"""Sessions and transactions: the tenant-scoped one, and the admin one for provisioning.

`tenant_transaction` is the only way any code (requests, the CLI, workers, tests, benchmarks)
gets a tenant-scoped session: it begins and sets the tenant context (with whatever the
connection's pool mode and Citus need) in one round trip, commits on success and rolls back
on error. Services receive the session and never touch the context.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core import metrics
from app.database.tenant_context import IsolationLevel, become_admin, enter_tenant, opening_sql

CALLER_CHANGES = "caller_changes"
"""`session.info` key: caller_change_seq's value as the tenant transaction began."""

# Where the server's WAL ends: after a COMMIT, at or past that commit's record.
COMMITTED_POSITION = text("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no implicit refresh I/O)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class TenantTransaction:
    """One transaction as the sessions' role, scoped to one tenant from its first statement.

    Use it through `tenant_transaction(...)`. Inside, `session.info[CALLER_CHANGES]` is the
    caller-change counter read in the opening round trip; after a successful exit,
    `committed_position` holds the WAL position at or after the commit when asked for (read
    replicas' consistency token).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tenant_id: uuid.UUID,
        record_commit_position: bool = False,
        isolation: IsolationLevel | None = None,
    ) -> None:
        opening_sql(tenant_id, isolation=isolation)  # refuses a bad id or level before any I/O
        self.tenant_id = tenant_id
        self._isolation = isolation
        self.committed_position: int | None = None
        self._record_commit_position = record_commit_position
        self._sessions = sessions
        self._scope: AbstractAsyncContextManager[AsyncSession] | None = None

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            async with session.begin():
                started = time.perf_counter()
                # Checked out here: the pool's wait is measured alone.
                connection = await session.connection()
                metrics.DB_POOL_ACQUIRE.observe(time.perf_counter() - started)
                session.info[CALLER_CHANGES] = await enter_tenant(
                    connection, self.tenant_id, isolation=self._isolation
                )
                yield session
            if self._record_commit_position:
                # After COMMIT, on the same server: the end of WAL is at or past the commit
                # record, so a replica that replayed this far sees the transaction. Read in
                # autocommit (the engine's mode): one round trip, no transaction around it.
                connection = await session.connection()
                position = (await connection.execute(COMMITTED_POSITION)).scalar_one()
                self.committed_position = int(position)

    async def __aenter__(self) -> AsyncSession:
        self._scope = self._open()
        return await self._scope.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._scope is not None
        return await self._scope.__aexit__(exc_type, exc, traceback)


def tenant_transaction(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    *,
    record_commit_position: bool = False,
    isolation: IsolationLevel | None = None,
) -> TenantTransaction:
    """One transaction scoped to `tenant_id`: committed on success, rolled back on error.

    `BEGIN`, the tenant context, the transaction-local settings of a pool in transaction mode
    and Citus's `SET LOCAL` go to the server as one message (`enter_tenant`), so the
    transaction costs no more round trips than an unscoped one. The caller-change counter read
    in that round trip is `session.info[CALLER_CHANGES]`.
    `record_commit_position`: after the commit, read the server's WAL position into
    `.committed_position` (one more round trip; for the consistency token of read replicas).
    `isolation`: the transaction's isolation level (the server's default, READ COMMITTED,
    otherwise), set by the opening `BEGIN`. `sessions` must be an autocommit engine's
    (`build_runtime_engine`).
    """
    return TenantTransaction(sessions, tenant_id, record_commit_position, isolation)


@asynccontextmanager
async def admin_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One transaction as the provisioning role (BYPASSRLS). Admin CLI and dev seeding only."""
    async with sessions() as session, session.begin():
        await become_admin(session)
        yield session
