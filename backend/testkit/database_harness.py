"""The test database: a real PostgreSQL with pgvector, migrated by Alembic as a non-superuser.

With TEST_DATABASE_URL set (a login that can create databases and roles, e.g. `postgres` on
the pgvector/pgvector image), that server is used; otherwise a throw-away embedded server.

The schema is built the least-privilege way: a superuser (the harness) only installs the
`vector` extension and pre-creates the BYPASSRLS provisioning role, both of which need a
superuser; everything else is migrated by `app_migrator`, a plain login that owns the tables.
So the table owner is not a superuser, and tests can show that even it sees no rows.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from app.core.config import normalise_database_url
from app.database import migrations

MIGRATOR_ROLE = "app_migrator"
MIGRATOR_PASSWORD = "migrator-test-password"
RUNTIME_PASSWORD = "runtime-test-password"


@dataclass
class TestServer:
    """A PostgreSQL server the tests may create databases and roles on."""

    superuser_url: URL  # of the maintenance database
    embedded: Any | None = None

    def url(
        self, database: str, *, username: str | None = None, password: str | None = None
    ) -> URL:
        """URL of `database`, as `username` (default: the superuser)."""
        url = self.superuser_url.set(database=database)
        if username is not None:
            url = url.set(username=username, password=password)
        return url


def libpq(url: URL) -> str:
    """A libpq DSN for psycopg from a SQLAlchemy URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def start_test_server() -> TestServer:
    """Use TEST_DATABASE_URL, or start a throw-away embedded server."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        return TestServer(make_url(normalise_database_url(external)))
    from app.database import embedded

    data_dir = Path(tempfile.mkdtemp(prefix="tenantdocs-test-"))
    server = embedded.start_embedded(data_dir, ephemeral=True)
    return TestServer(server.superuser_url("postgres"), embedded=server)


def create_database(server: TestServer, *, owner: str | None = None) -> str:
    """Create a fresh database (optionally owned by `owner`) with pgvector installed."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq(server.superuser_url), autocommit=True) as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            statement += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        conn.execute(statement)
    return name


def bootstrap_least_privilege(server: TestServer, database: str) -> None:
    """What a DBA does once so a non-superuser can migrate: extension, provisioning role."""
    with psycopg.connect(libpq(server.url(database)), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_admin') THEN"
            " CREATE ROLE app_admin NOLOGIN NOSUPERUSER BYPASSRLS NOINHERIT; END IF; END $$"
        )
        conn.execute(
            sql.SQL("GRANT app_admin TO {} WITH ADMIN OPTION").format(sql.Identifier(MIGRATOR_ROLE))
        )


def ensure_migrator_role(server: TestServer) -> None:
    """The non-superuser login that runs the migrations in tests (CREATEROLE, nothing more)."""
    with psycopg.connect(libpq(server.superuser_url), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (MIGRATOR_ROLE,)
        ).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS CREATEROLE PASSWORD {}").format(
                sql.Identifier(MIGRATOR_ROLE), sql.Literal(MIGRATOR_PASSWORD)
            )
        )


def drop_database(server: TestServer, database: str) -> None:
    """Drop a test database, disconnecting whoever is still in it."""
    with psycopg.connect(libpq(server.superuser_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database error, whether raised by psycopg or wrapped by SQLAlchemy."""
    original = getattr(error, "orig", error)
    return getattr(original, "sqlstate", None)


@dataclass
class MigratedDatabase:
    """A test database at a migration revision, and the logins that reach it."""

    server: TestServer
    name: str
    owner_url: URL  # app_migrator: the migration login and table owner (not a superuser)
    superuser_url: URL
    runtime_url: URL  # app_runtime's own login


def _runtime_password_to_set(server: TestServer) -> str | None:
    """RUNTIME_PASSWORD, or None when app_runtime already logs in with it.

    Setting a password again rewrites the role's SCRAM verifier (a new salt): on a server
    that test runs and benchmarks share, that is a change of its configuration (issue 20)."""
    runtime = server.url("postgres", username="app_runtime", password=RUNTIME_PASSWORD)
    try:
        with psycopg.connect(libpq(runtime), connect_timeout=10):
            return None
    except psycopg.OperationalError:
        return RUNTIME_PASSWORD


def create_migrated_database(server: TestServer, revision: str = "head") -> MigratedDatabase:
    """A fresh database migrated to `revision` the least-privilege way (app_migrator)."""
    name = create_database(server, owner=MIGRATOR_ROLE)
    bootstrap_least_privilege(server, name)
    owner_url = server.url(name, username=MIGRATOR_ROLE, password=MIGRATOR_PASSWORD)
    migrations.upgrade(owner_url, _runtime_password_to_set(server), revision)
    return MigratedDatabase(
        server=server,
        name=name,
        owner_url=owner_url,
        superuser_url=server.url(name),
        runtime_url=server.url(name, username="app_runtime", password=RUNTIME_PASSWORD),
    )
