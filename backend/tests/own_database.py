"""Session fixtures for a suite that needs a database of its own.

A suite whose rows are committed (HTTP tests: the app owns its transactions) or whose
assertions depend on what else is in the tables (approximate HNSW search) imports these into
its conftest.py. They re-run tests/conftest.py's own fixture functions for a second database,
so neither suite changes what the other's query plans and searches see. A session fixture that
depends on an overridden one must be overridden too, hence the whole set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database import Database
from testkit import database_harness as harness
from testkit.auth_helpers import IssuerServer
from tests import conftest as root
from tests.conftest import MigratedDatabase


@pytest.fixture(scope="session")
def migrated_db(test_server: harness.TestServer) -> Iterator[MigratedDatabase]:
    """A fresh database at head, for the importing suite only."""
    yield from root.migrated_db.__wrapped__(test_server)


@pytest.fixture(scope="session")
def settings(
    migrated_db: MigratedDatabase, issuer_server: IssuerServer, dev_key_file: Path
) -> Settings:
    """The suite's settings, pointed at the API tests' database."""
    result: Settings = root.settings.__wrapped__(migrated_db, issuer_server, dev_key_file)
    return result


@pytest.fixture(scope="session")
async def runtime_engine(
    settings: Settings, migrated_db: MigratedDatabase
) -> AsyncIterator[AsyncEngine]:
    """The engine request handlers use (app_runtime), on the API tests' database."""
    async for engine in root.runtime_engine.__wrapped__(settings, migrated_db):
        yield engine


@pytest.fixture(scope="session")
def runtime_sessions(runtime_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions as app_runtime, on the API tests' database."""
    result: async_sessionmaker[AsyncSession] = root.runtime_sessions.__wrapped__(runtime_engine)
    return result


@pytest.fixture(scope="session")
async def owner_engine(
    settings: Settings, migrated_db: MigratedDatabase
) -> AsyncIterator[AsyncEngine]:
    """The migrating login, on the API tests' database."""
    async for engine in root.owner_engine.__wrapped__(settings, migrated_db):
        yield engine


@pytest.fixture(scope="session")
def admin_sessions(owner_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Provisioning sessions, on the API tests' database."""
    result: async_sessionmaker[AsyncSession] = root.admin_sessions.__wrapped__(owner_engine)
    return result


@pytest.fixture(scope="session")
def database(
    migrated_db: MigratedDatabase,
    runtime_engine: AsyncEngine,
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> Database:
    """The Database object the app holds, for the API tests' database."""
    result: Database = root.database.__wrapped__(migrated_db, runtime_engine, runtime_sessions)
    return result
