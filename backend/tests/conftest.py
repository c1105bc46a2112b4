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
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database import Database
from app.main import create_app
from testkit import database_harness as harness
from testkit.auth_helpers import AuthenticatedCaller, IssuerServer, TestIssuer, create_caller
from tests.own_database import database_fixtures

os.environ.setdefault("ENVIRONMENT", "test")


MigratedDatabase = harness.MigratedDatabase


@pytest.fixture(scope="session")
def test_server() -> Iterator[harness.TestServer]:
    """The PostgreSQL server for the whole run (embedded unless TEST_DATABASE_URL is set)."""
    server = harness.start_test_server()
    harness.ensure_migrator_role(server)
    return server


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


# The run's shared database (a suite with its own calls `database_fixtures()` in its conftest).
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
