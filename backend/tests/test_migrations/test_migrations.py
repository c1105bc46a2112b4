"""The whole migration chain: up, down, up (as a superuser and as a least-privilege login), and
the models match what the migrations build, exactly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL

from app.database import migrations
from app.database.base import Base, is_outside_the_model
from app.models import SYSTEM_TENANT_ID, AuditLog, Document, Tenant, User  # noqa: F401
from testkit import database_harness as harness
from tests.conftest import MigratedDatabase

APP_TABLES = {"tenants", "users", "documents", "audit_logs", "idempotency_keys", "document_chunks"}
APP_FUNCTIONS = {
    "set_updated_at",
    "prevent_audit_log_modification",
    "audit_netstring",
    "audit_log_row_hash",
    "guard_audit_log_tenant",
    "chain_audit_log",
    "audit_log_user_of_tenant",
    "notify_caller_change",
    "caller_changes_sync",
}


def _schema_facts(url: URL) -> dict[str, Any]:
    with psycopg.connect(harness.libpq(url)) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                " AND relkind = 'r'"
            )
        }
        functions = {
            row[0]
            for row in conn.execute(
                "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
            )
        } & APP_FUNCTIONS
        system = (
            conn.execute(
                "SELECT name, status FROM tenants WHERE id = %s", (SYSTEM_TENANT_ID,)
            ).fetchone()
            if "tenants" in tables
            else None
        )
        policies = conn.execute("SELECT count(*) FROM pg_policy").fetchone()
        hnsw = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_documents_embedding_hnsw'"
        ).fetchone()
    return {
        "tables": tables,
        "functions": functions,
        "system": system,
        "policies": policies,
        "hnsw": hnsw[0] if hnsw else None,
    }


def _assert_at_head(url: URL, inspect_as: URL) -> None:
    assert migrations.current_revision(url) == migrations.head_revision()
    facts = _schema_facts(inspect_as)  # a superuser: under FORCE even the owner sees no rows
    assert facts["tables"] >= APP_TABLES
    assert facts["functions"] == APP_FUNCTIONS
    assert facts["system"] == ("System", "active")
    # 5 app_runtime policies on the 4 original tenant tables (2 on audit_logs), audit_chain_heads'
    # owner one, idempotency_keys' runtime one, document_chunks' isolation one (runtime and owner).
    assert facts["policies"] == (8,)
    # The shared HNSW index is gone (8b61c0d4e2f5): each large tenant gets its own, built by
    # the maintenance command, not by migrations (docs/VECTOR_SEARCH.md).
    assert facts["hnsw"] is None


def _assert_at_base(url: URL, inspect_as: URL) -> None:
    assert migrations.current_revision(url) is None
    facts = _schema_facts(inspect_as)
    assert facts["tables"] <= {"alembic_version"}
    assert facts["functions"] == set()
    assert facts["policies"] == (0,)


# Roles are cluster-wide: the downgrade drops app_runtime/app_admin only when no other database
# uses them. Requesting `migrated_db` keeps the session database (like any other database on a
# shared server) using them, so these tests behave the same whatever order they run in.


def test_upgrade_downgrade_upgrade_as_superuser(
    test_server: harness.TestServer, migrated_db: MigratedDatabase
) -> None:
    # Railway-like: DATABASE_URL is the superuser, which also installs pgvector.
    name = harness.create_database(test_server)
    url = test_server.url(name)
    try:
        migrations.upgrade(url, harness.RUNTIME_PASSWORD)
        _assert_at_head(url, test_server.url(name))
        migrations.downgrade(url, "base")
        _assert_at_base(url, test_server.url(name))
        migrations.upgrade(url, harness.RUNTIME_PASSWORD)
        _assert_at_head(url, test_server.url(name))
    finally:
        harness.drop_database(test_server, name)


def test_upgrade_downgrade_upgrade_as_least_privilege_login(
    test_server: harness.TestServer, migrated_db: MigratedDatabase
) -> None:
    name = harness.create_database(test_server, owner=harness.MIGRATOR_ROLE)
    harness.bootstrap_least_privilege(test_server, name)
    url = test_server.url(name, username=harness.MIGRATOR_ROLE, password=harness.MIGRATOR_PASSWORD)
    try:
        migrations.upgrade(url, harness.RUNTIME_PASSWORD)
        _assert_at_head(url, test_server.url(name))
        migrations.downgrade(url, "base")
        _assert_at_base(url, test_server.url(name))
        migrations.upgrade(url, harness.RUNTIME_PASSWORD)
        _assert_at_head(url, test_server.url(name))
        with psycopg.connect(harness.libpq(url)) as conn:
            owners = conn.execute(
                "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relname = ANY(%s)",
                (list(APP_TABLES),),
            ).fetchall()
        assert owners == [(harness.MIGRATOR_ROLE,)]
    finally:
        harness.drop_database(test_server, name)


def _include(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    return not is_outside_the_model(obj, name, type_)


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "compare_server_default": True, "include_object": _include},
    )
    return list(compare_metadata(context, Base.metadata))


@pytest.fixture
def migrated_connection(migrated_db: MigratedDatabase) -> Iterator[Connection]:
    """A superuser connection to the session database, rolled back at the end."""
    engine = create_engine(migrated_db.superuser_url)
    with engine.connect() as connection:
        yield connection
        connection.rollback()
    engine.dispose()


def test_autogenerate_finds_no_difference_between_models_and_migrations(
    migrated_connection: Connection,
) -> None:
    assert _differences(migrated_connection) == []
    # The comparison can fail: drift the database (rolled back) and it is noticed.
    migrated_connection.execute(text("COMMENT ON COLUMN documents.status IS 'drifted'"))
    migrated_connection.execute(text("ALTER TABLE users ALTER COLUMN role SET DEFAULT 'admin'"))
    kinds = {
        diff[0][0] if isinstance(diff, list) else diff[0]
        for diff in _differences(migrated_connection)
    }
    assert {"modify_comment", "modify_default"} <= kinds


# What autogenerate does not compare (index predicates, operator classes, storage parameters,
# CHECK bodies): compare the catalogs of the migrated database with those of a database built
# from the models by create_all.
_CATALOG = {
    "columns": """
        SELECT c.table_name, c.column_name, c.ordinal_position, c.data_type, c.udt_name,
               c.character_maximum_length, c.is_nullable, c.column_default,
               col_description(format('%I', c.table_name)::regclass, c.ordinal_position::int)
        FROM information_schema.columns c
        WHERE c.table_schema = 'public' AND c.table_name <> 'alembic_version'
          AND c.table_name NOT LIKE 'procrastinate\\_%'
    """,
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'alembic_version'
          AND tablename NOT LIKE 'procrastinate\\_%'
    """,
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace AND conrelid <> 0
          AND conrelid::regclass::text <> 'alembic_version'
          -- Constraint triggers (contype t) are triggers, migration-only like every trigger.
          AND contype <> 't'
          AND conrelid::regclass::text NOT LIKE 'procrastinate\\_%'
    """,
    "tables": """
        SELECT relname, obj_description(oid, 'pg_class') FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
          AND relname <> 'alembic_version' AND relname NOT LIKE 'procrastinate\\_%'
    """,
}


def _catalog(url: URL) -> dict[str, set[tuple[Any, ...]]]:
    with psycopg.connect(harness.libpq(url)) as conn:
        return {key: set(conn.execute(query).fetchall()) for key, query in _CATALOG.items()}


def test_catalogs_of_migrations_and_models_are_identical(
    test_server: harness.TestServer, migrated_db: MigratedDatabase
) -> None:
    name = harness.create_database(test_server)
    url = test_server.url(name)
    try:
        with psycopg.connect(harness.libpq(url), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION vector")
        engine = create_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
        from_models = _catalog(url)
    finally:
        harness.drop_database(test_server, name)
    from_migrations = _catalog(migrated_db.superuser_url)
    assert len(from_migrations["indexes"]) >= 15
    for key in _CATALOG:
        only_in_migrations = sorted(from_migrations[key] - from_models[key], key=str)
        only_in_models = sorted(from_models[key] - from_migrations[key], key=str)
        assert (key, only_in_migrations, only_in_models) == (key, [], [])
