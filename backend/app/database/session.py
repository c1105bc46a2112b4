"""Sessions and transactions: the tenant-scoped one, and the admin one for provisioning.

`tenant_transaction` is the only way any code (requests, the CLI, workers, tests, benchmarks)
gets a tenant-scoped session: it begins, sets the tenant context and runs the opening query
(for a request, the caller lookup) in one round trip, commits on success and rolls back on
error. Services receive the session and never touch the context.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core import metrics
from app.database.tenant_context import BoundOpening, become_admin, enter_tenant, tenant_parameter

# Where the server's WAL ends: after a COMMIT, at or past that commit's record.
COMMITTED_POSITION = text("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no implicit refresh I/O)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class TenantTransaction:
    """One transaction as the sessions' role, scoped to one tenant from its first statement.

    Use it through `tenant_transaction(...)`; after entering, `opening_rows` holds the rows of
    the opening query (empty without one); after a successful exit, `committed_position` holds
    the WAL position at or after the commit when asked for (read replicas' consistency token).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tenant_id: uuid.UUID,
        opening: BoundOpening | None = None,
        record_commit_position: bool = False,
    ) -> None:
        tenant_parameter(tenant_id)  # refuses anything but a UUID before any I/O
        self.tenant_id = tenant_id
        self.opening_rows: Sequence[Row[Any]] = ()
        self.committed_position: int | None = None
        self._record_commit_position = record_commit_position
        self._sessions = sessions
        self._opening = opening
        self._scope: AbstractAsyncContextManager[AsyncSession] | None = None

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            async with session.begin():
                started = time.perf_counter()
                await session.connection()  # checked out here: the pool's wait is measured alone
                metrics.DB_POOL_ACQUIRE.observe(time.perf_counter() - started)
                self.opening_rows = await enter_tenant(session, self.tenant_id, self._opening)
                yield session
            if self._record_commit_position:
                # After COMMIT, on the same server: the end of WAL is at or past the commit
                # record, so a replica that replayed this far sees the transaction.
                position = await session.scalar(COMMITTED_POSITION)
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
    opening: BoundOpening | None = None,
    record_commit_position: bool = False,
) -> TenantTransaction:
    """One transaction scoped to `tenant_id`: committed on success, rolled back on error.

    `opening`: a query (`OpeningQuery.bind(...)`) folded into the statement that sets the
    context, so the first read costs no extra round trip; its rows are `.opening_rows`.
    `record_commit_position`: after the commit, read the primary's WAL position into
    `.committed_position` (one more round trip; for the consistency token of read replicas).
    """
    return TenantTransaction(sessions, tenant_id, opening, record_commit_position)


@asynccontextmanager
async def admin_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One transaction as the provisioning role (BYPASSRLS). Admin CLI and dev seeding only."""
    async with sessions() as session, session.begin():
        await become_admin(session)
        yield session
