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

from app.content.backends import ContentBackends
from app.content.embedded_openbao import EmbeddedOpenBao, start_openbao
from app.content.embedded_process import free_ports
from app.content.embedded_seaweedfs import EmbeddedS3, start_seaweedfs
from app.content.object_store import S3Location, S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.config import Settings
from app.database import Database
from app.main import create_app
from testkit import database_harness as harness
from testkit.auth_helpers import AuthenticatedCaller, IssuerServer, TestIssuer, create_caller
from tests.own_database import database_fixtures
from tests.replica_database import replica_database, replica_pair

os.environ.setdefault("ENVIRONMENT", "test")


MigratedDatabase = harness.MigratedDatabase
__all__ = ["replica_database", "replica_pair"]  # fixtures (tests/replica_database.py)


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


@pytest.fixture(scope="session")
def embedded_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    """One SeaweedFS (S3 gateway with a signing identity) for the run, on throw-away data."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), stop_at_exit=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embedded_openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedOpenBao]:
    """One OpenBao (raft storage, initialised, unsealed, transit on) for the run."""
    server = start_openbao(tmp_path_factory.mktemp("openbao"), stop_at_exit=False)
    yield server
    server.stop()


def s3_location(server: EmbeddedS3, **overrides: Any) -> S3Location:
    """Where the embedded S3 is, signing as its identity (override a field to break it)."""
    values: dict[str, Any] = {
        "bucket": server.bucket,
        "region": server.region,
        "endpoint_url": server.endpoint_url,
        "access_key_id": server.access_key_id,
        "secret_access_key": server.secret_access_key,
    }
    return S3Location(**{**values, **overrides})


@pytest.fixture(scope="session")
async def object_store(embedded_s3: EmbeddedS3) -> AsyncIterator[S3ObjectStore]:
    """The S3 object store over the embedded SeaweedFS (its bucket created)."""
    store = await S3ObjectStore.open(s3_location(embedded_s3))
    await store.ensure_bucket()
    yield store
    await store.close()


@pytest.fixture(scope="session")
async def key_manager(
    embedded_openbao: EmbeddedOpenBao,
) -> AsyncIterator[OpenBaoTransitKeyManager]:
    """Per-tenant keys in the embedded OpenBao's transit engine."""
    keys = OpenBaoTransitKeyManager(embedded_openbao.address, embedded_openbao.token)
    yield keys
    await keys.close()


@pytest.fixture
def content_backends(
    settings: Settings, object_store: S3ObjectStore, key_manager: OpenBaoTransitKeyManager
) -> ContentBackends:
    """The app's object store and key manager: the run's SeaweedFS and OpenBao."""
    return ContentBackends(settings, store=object_store, keys=key_manager, owned=False)


@pytest.fixture
async def content_client(
    settings: Settings, database: Database, content_backends: ContentBackends
) -> AsyncIterator[httpx.AsyncClient]:
    """Like `client`, for an app that stores document content (SeaweedFS, OpenBao)."""
    app = create_app(settings, database, content=content_backends)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def unreachable_store(embedded_s3: EmbeddedS3) -> AsyncIterator[S3ObjectStore]:
    """An object store whose endpoint nothing listens on."""
    (port,) = free_ports(1)
    store = await S3ObjectStore.open(
        s3_location(embedded_s3, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)
    )
    yield store
    await store.close()


@pytest.fixture
async def unreachable_keys(
    embedded_openbao: EmbeddedOpenBao,
) -> AsyncIterator[OpenBaoTransitKeyManager]:
    """A key manager whose address nothing listens on."""
    (port,) = free_ports(1)
    keys = OpenBaoTransitKeyManager(f"http://127.0.0.1:{port}", embedded_openbao.token)
    yield keys
    await keys.close()
