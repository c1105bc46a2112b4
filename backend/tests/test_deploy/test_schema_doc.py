"""DATABASE_SCHEMA.md names every table, column, constraint, index, trigger and function the
migrations create, with each foreign key's ON DELETE and the per-tenant HNSW indexes' parameters."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from app.services import vector_indexes as vector_indexes_service
from testkit import database_harness as harness
from tests.conftest import MigratedDatabase
from tests.test_deploy.artifacts import DOCS_DIR

SCHEMA_DOC = (DOCS_DIR / "DATABASE_SCHEMA.md").read_text()
# procrastinate's queue (tables, types, functions, triggers) is the library's own schema,
# documented as a whole (DATABASE_SCHEMA.md, "The job queue"), not object by object.
QUEUE_PREFIX = "procrastinate"
ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def _catalog(migrated_db: MigratedDatabase, query: str) -> list[tuple[str, ...]]:
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as connection:
        return [tuple(row) for row in connection.execute(query).fetchall()]  # type: ignore[arg-type]


def _table_section(table: str) -> str:
    parts = SCHEMA_DOC.split(f"### `{table}`", 1)
    assert len(parts) == 2, f"no section for table {table}"
    return parts[1].split("\n### ", 1)[0]


@pytest.fixture(scope="module")
def tables(migrated_db: MigratedDatabase) -> list[str]:
    rows = _catalog(migrated_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return sorted(row[0] for row in rows if not row[0].startswith(QUEUE_PREFIX))


def test_every_table_and_column_is_documented(
    migrated_db: MigratedDatabase, tables: list[str]
) -> None:
    assert {"tenants", "users", "documents", "audit_logs"} <= set(tables)
    columns = _catalog(
        migrated_db,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public'",
    )
    for table, column in columns:
        if table.startswith(QUEUE_PREFIX):
            continue
        section = _table_section(table)
        assert f"`{column}`" in section, f"{table}.{column} is not documented"


def test_every_constraint_index_trigger_and_function_is_documented(
    migrated_db: MigratedDatabase,
) -> None:
    names = _catalog(
        migrated_db,
        """
        SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
            WHERE n.nspname = 'public' AND c.contype <> 'n'  -- NOT NULL: the Null column
            AND c.conrelid::regclass::text NOT LIKE 'procrastinate%'
        UNION SELECT indexname FROM pg_indexes WHERE schemaname = 'public'
            AND tablename NOT LIKE 'procrastinate%'
        UNION SELECT tgname FROM pg_trigger WHERE NOT tgisinternal
            AND tgrelid::regclass::text NOT LIKE 'procrastinate%'
        UNION SELECT p.proname || '()' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public' AND NOT EXISTS (
                SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
        """,
    )
    missing = sorted(
        name
        for (name,) in names
        if f"`{name}`" not in SCHEMA_DOC and not name.lstrip("_").startswith(QUEUE_PREFIX)
    )
    assert missing == []
    assert f"`{QUEUE_PREFIX}_jobs`" in SCHEMA_DOC


def test_foreign_keys_are_documented_with_their_on_delete(migrated_db: MigratedDatabase) -> None:
    foreign_keys = _catalog(
        migrated_db,
        "SELECT conname, confdeltype::text FROM pg_constraint WHERE contype = 'f'"
        " AND connamespace = 'public'::regnamespace",
    )
    assert len(foreign_keys) >= 5
    for name, on_delete in foreign_keys:
        if name.startswith(QUEUE_PREFIX):
            continue
        row = next((line for line in SCHEMA_DOC.splitlines() if line.startswith(f"| `{name}`")), "")
        assert row.rstrip(" |").endswith(ON_DELETE[on_delete]), f"{name}: ON DELETE {on_delete}"


def test_hnsw_parameters_match_the_per_tenant_indexes(migrated_db: MigratedDatabase) -> None:
    """The parameters the maintenance command builds each tenant's index with are documented."""
    statement = vector_indexes_service.create_index_sql(uuid.uuid4())
    parameters = statement.split("WITH (", 1)[1].split(")", 1)[0]
    for parameter in parameters.split(","):
        assert parameter.replace(" ", "") in SCHEMA_DOC, parameter
    assert vector_indexes_service.INDEX_PREFIX + "<tenant id hex>" in SCHEMA_DOC
    (dimensions,) = _catalog(
        migrated_db,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'documents'::regclass AND attname = 'embedding_vector'",
    )
    assert f"`{dimensions[0]}`" in SCHEMA_DOC


def test_policies_are_documented(migrated_db: MigratedDatabase) -> None:
    rls_doc = (DOCS_DIR / "RLS_PATTERNS.md").read_text()
    for (policy,) in _catalog(migrated_db, "SELECT policyname FROM pg_policies"):
        assert f"`{policy}`" in SCHEMA_DOC, policy
        assert f"`{policy}`" in rls_doc, policy
