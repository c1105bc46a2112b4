"""The vector-search tests get a database of their own.

Which path a search takes (exact scan or HNSW) and what the approximate HNSW path finds depend
on everything else in the documents table, so these tests must not share it with suites that
leave rows behind.
"""

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database.engine import build_engine
from app.services import vector_indexes as vector_indexes_service
from testkit import database_harness as harness
from tests.own_database import database_fixtures

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


@pytest.fixture(scope="session")
async def maintenance_engine(
    settings: Settings, migrated_db: harness.MigratedDatabase
) -> AsyncIterator[AsyncEngine]:
    """The table owner's engine as the maintenance command builds it: no statement timeout."""
    engine = build_engine(
        migrated_db.owner_url,
        settings,
        pool_size=2,
        max_overflow=0,
        server_settings={"statement_timeout": "0"},
    )
    yield engine
    await engine.dispose()


@pytest.fixture
def maintain_vector_indexes(
    maintenance_engine: AsyncEngine, runtime_sessions: async_sessionmaker[AsyncSession]
) -> Callable[[int], Awaitable[list[vector_indexes_service.IndexResult]]]:
    """Run the maintenance command's work (as the table owner, probing as app_runtime)."""

    async def maintain(min_rows: int) -> list[vector_indexes_service.IndexResult]:
        return await vector_indexes_service.maintain_indexes(
            maintenance_engine, min_rows, probe_sessions=runtime_sessions
        )

    return maintain
