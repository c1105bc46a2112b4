"""Shared fixtures: one real PostgreSQL for the session, migrated to head as a non-superuser.

Request-style code runs as `app_runtime` (logged in with its own password, the strong mode);
provisioning uses `app_admin` through the migrating login, as the admin CLI does.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings, load_settings
from app.database import Database
from app.database.engine import build_engine, build_runtime_engine, targets_for
from app.database.session import make_sessionmaker
from app.main import create_app
from tests import database_harness as harness
from tests.auth_helpers import AuthenticatedCaller, IssuerServer, TestIssuer, create_caller

os.environ.setdefault("ENVIRONMENT", "test")


MigratedDatabase = harness.MigratedDatabase


@pytest.fixture(scope="session")
def test_server() -> Iterator[harness.TestServer]:
    """The PostgreSQL server for the whole run (embedded unless TEST_DATABASE_URL is set)."""
    server = harness.start_test_server()
    harness.ensure_migrator_role(server)
    return server


@pytest.fixture(scope="session")
def migrated_db(test_server: harness.TestServer) -> Iterator[MigratedDatabase]:
    """A fresh database migrated to head by the non-superuser migrator."""
    database = harness.create_migrated_database(test_server)
    yield database
    harness.drop_database(test_server, database.name)


@pytest.fixture(scope="session")
def issuer_server() -> Iterator[IssuerServer]:
    """A test OIDC issuer serving its discovery document and JWKS over HTTP on 127.0.0.1."""
    server = IssuerServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def test_issuer(issuer_server: IssuerServer) -> TestIssuer:
    """The issuer the app under test trusts: mint tokens with `test_issuer.mint(...)`."""
    return issuer_server.issuer


@pytest.fixture(scope="session")
def dev_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where dev-mode tests keep the dev issuer's key (never the developer's backend/.data)."""
    return tmp_path_factory.mktemp("dev-issuer") / "signing-key.pem"


@pytest.fixture(scope="session")
def settings(
    migrated_db: MigratedDatabase, issuer_server: IssuerServer, dev_key_file: Path
) -> Settings:
    """Settings as the app would load them for the test database (strong login mode)."""
    return load_settings(
        ENVIRONMENT="test",
        DATABASE_URL=migrated_db.owner_url.render_as_string(hide_password=False),
        APP_RUNTIME_PASSWORD=harness.RUNTIME_PASSWORD,
        DB_POOL_SIZE=5,
        DB_MAX_OVERFLOW=5,
        LOG_LEVEL="WARNING",
        OIDC_ISSUER_URL=issuer_server.url,
        OIDC_CLIENT_ID=issuer_server.issuer.audience,
        DEV_ISSUER_KEY_FILE=dev_key_file,
        CURSOR_SECRET_FILE=dev_key_file.with_name("cursor-secret"),
    )


@pytest.fixture(scope="session")
async def runtime_engine(
    settings: Settings, migrated_db: MigratedDatabase
) -> AsyncIterator[AsyncEngine]:
    """The engine request handlers use: logged in as app_runtime."""
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, settings)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def runtime_sessions(runtime_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions as app_runtime (use with `tenant_transaction`)."""
    return make_sessionmaker(runtime_engine)


@pytest.fixture(scope="session")
async def owner_engine(
    settings: Settings, migrated_db: MigratedDatabase
) -> AsyncIterator[AsyncEngine]:
    """The migrating login (table owner); switches to app_admin in `admin_transaction`."""
    engine = build_engine(migrated_db.owner_url, settings, pool_size=2, max_overflow=2)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def admin_sessions(owner_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for provisioning (use with `admin_transaction`)."""
    return make_sessionmaker(owner_engine)


@pytest.fixture(scope="session")
def database(
    migrated_db: MigratedDatabase,
    runtime_engine: AsyncEngine,
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> Database:
    """The Database object the app holds, for the test database."""
    return Database(
        targets=targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD),
        engine=runtime_engine,
        sessions=runtime_sessions,
    )


@pytest.fixture
async def client(settings: Settings, database: Database) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the app, served in-process over ASGI."""
    app = create_app(settings, database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


MakeCaller = Callable[..., Awaitable[AuthenticatedCaller]]


@pytest.fixture
def make_caller(
    admin_sessions: async_sessionmaker[AsyncSession], test_issuer: TestIssuer
) -> MakeCaller:
    """`tenant, user, headers = await make_caller(role="admin")`: a new tenant and user.

    Pass `tenant=` to add the user to an existing tenant; also `email=`, `full_name=`.
    """

    async def make(**options: Any) -> AuthenticatedCaller:
        return await create_caller(admin_sessions, test_issuer, **options)

    return make
