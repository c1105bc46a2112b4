"""The vector-search tests get a database of their own.

Which path a search takes (exact scan or HNSW) and what the approximate HNSW path finds depend
on everything else in the documents table, so these tests must not share it with suites that
leave rows behind.
"""

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.services import vector_indexes as vector_indexes_service
from tests import own_database

migrated_db = own_database.migrated_db
settings = own_database.settings
runtime_engine = own_database.runtime_engine
runtime_sessions = own_database.runtime_sessions
owner_engine = own_database.owner_engine
admin_sessions = own_database.admin_sessions
database = own_database.database


@pytest.fixture
def maintain_vector_indexes(
    owner_engine: AsyncEngine,
) -> Callable[[int], Awaitable[list[vector_indexes_service.IndexResult]]]:
    """Run the maintenance command's work (as the table owner, autocommit) with a threshold."""

    async def maintain(min_rows: int) -> list[vector_indexes_service.IndexResult]:
        async with owner_engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            return await vector_indexes_service.maintain_indexes(autocommit, min_rows)

    return maintain
