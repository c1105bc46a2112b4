"""The one fixture factory for a database of one's own: `database_fixtures(prefix)`.

Every suite's database comes from here, the root conftest's (the run's shared database)
included. A suite whose rows are committed (HTTP tests: the app owns its transactions) or
whose assertions depend on what else is in the tables (approximate HNSW search) calls it in
its conftest.py and gets fixtures of the usual names for a database of its own; a suite that
needs a second database beside the shared one (the audit tamper tests) passes a prefix. Each
call makes new fixture functions, so no two suites share a session-scoped value.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings, load_settings
from app.database import Database
from app.database.engine import build_engine, build_runtime_engine, targets_for
from app.database.session import make_sessionmaker
from testkit import database_harness as harness
from testkit.auth_helpers import IssuerServer


@dataclass
class DatabaseSet:
    """One migrated database and what tests use of it."""

    migrated_db: harness.MigratedDatabase
    settings: Settings
    runtime_engine: AsyncEngine
    runtime_sessions: async_sessionmaker[AsyncSession]
    owner_engine: AsyncEngine
    admin_sessions: async_sessionmaker[AsyncSession]
    database: Database


def open_database_set(
    test_server: harness.TestServer, issuer_server: IssuerServer, dev_key_file: Path
) -> DatabaseSet:
    """A fresh database at head (migrated as the non-superuser), its settings and engines."""
    migrated = harness.create_migrated_database(test_server)
    settings = load_settings(
        ENVIRONMENT="test",
        DATABASE_URL=migrated.owner_url.render_as_string(hide_password=False),
        APP_RUNTIME_PASSWORD=harness.RUNTIME_PASSWORD,
        DB_POOL_SIZE=5,
        DB_MAX_OVERFLOW=5,
        LOG_LEVEL="WARNING",
        OIDC_ISSUER_URL=issuer_server.url,
        OIDC_CLIENT_ID=issuer_server.issuer.audience,
        DEV_ISSUER_KEY_FILE=dev_key_file,
        CURSOR_SECRET_FILE=dev_key_file.with_name("cursor-secret"),
    )
    targets = targets_for(migrated.owner_url, harness.RUNTIME_PASSWORD)
    # The engine request handlers use: logged in as app_runtime.
    runtime_engine = build_runtime_engine(targets, settings)
    runtime_sessions = make_sessionmaker(runtime_engine)
    # The migrating login (table owner); switches to app_admin in `admin_transaction`.
    owner_engine = build_engine(migrated.owner_url, settings, pool_size=2, max_overflow=2)
    return DatabaseSet(
        migrated_db=migrated,
        settings=settings,
        runtime_engine=runtime_engine,
        runtime_sessions=runtime_sessions,
        owner_engine=owner_engine,
        admin_sessions=make_sessionmaker(owner_engine),
        database=Database(targets=targets, engine=runtime_engine, sessions=runtime_sessions),
    )


# The fixtures each call makes, in the order `database_fixtures` returns them.
FIXTURE_NAMES = (
    "migrated_db",
    "settings",
    "runtime_engine",
    "runtime_sessions",
    "owner_engine",
    "admin_sessions",
    "database",
)


def database_fixtures(prefix: str = "") -> tuple[Any, ...]:
    """`(database_set, migrated_db, settings, runtime_engine, runtime_sessions, owner_engine,
    admin_sessions, database)` fixtures for a database of one's own, each named `prefix` + its
    usual name. Assign them to module-level names in a conftest.py."""
    set_name = f"{prefix}database_set"

    @pytest.fixture(scope="session", name=set_name)
    async def database_set(
        test_server: harness.TestServer, issuer_server: IssuerServer, dev_key_file: Path
    ) -> AsyncIterator[DatabaseSet]:
        opened = open_database_set(test_server, issuer_server, dev_key_file)
        yield opened
        await opened.runtime_engine.dispose()
        await opened.owner_engine.dispose()
        harness.drop_database(test_server, opened.migrated_db.name)

    return (database_set, *(_accessor(set_name, prefix, name) for name in FIXTURE_NAMES))


def _accessor(set_name: str, prefix: str, name: str) -> Any:
    def read(**fixtures: DatabaseSet) -> Any:
        return getattr(fixtures[set_name], name)

    # pytest reads a fixture's dependencies from its signature: this one needs the set.
    read.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(set_name, inspect.Parameter.KEYWORD_ONLY)]
    )
    read.__doc__ = f"`{name}` of the database `{set_name}` holds."
    fixture: Callable[..., Any] = pytest.fixture(scope="session", name=prefix + name)(read)
    return fixture
