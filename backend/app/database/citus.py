"""The rules Citus sets for a schema distributed by tenant, checked against the live catalog.

Citus (https://docs.citusdata.com/en/stable/develop/reference_ddl.html) distributes a table by
one column and requires that column in every primary key, unique constraint/index and foreign
key between distributed tables, and the referenced side of such a key must be the referenced
table's distribution column too (co-located tables). We distribute every tenant table by
`tenant_id` and `tenants` by `id` (docs/SCALING.md has the commands). A table without a tenant
is either a reference table (copied to every node) or stays on the coordinator: it must be
named in REFERENCE_TABLES or COORDINATOR_TABLES, so nobody adds one by accident.

tests/test_database/test_citus_rules.py runs `rule_violations` on the migrated schema and
fails on any table that breaks a rule (async code: `await connection.run_sync(rule_violations)`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection

TENANT_COLUMN = "tenant_id"
# The tenants table is distributed by its own id, co-located with every tenant table.
TENANTS_TABLE = "tenants"
# Tables copied to every node (create_reference_table): none yet.
REFERENCE_TABLES: frozenset[str] = frozenset()
# Tables that stay on the coordinator only (never joined with tenant data on the request path).
# procrastinate's job queue (docs/INGEST.md) is one of them: its rows hold only ids, workers
# poll it with SKIP LOCKED and LISTEN/NOTIFY on one node, and the runtime role reaches it only
# through `enqueue_document_ingest()` (docs/SCALING.md).
COORDINATOR_TABLES: frozenset[str] = frozenset(
    {
        "alembic_version",
        "procrastinate_events",
        "procrastinate_jobs",
        "procrastinate_periodic_defers",
        "procrastinate_workers",
    }
)


@dataclass(frozen=True)
class DistributedTable:
    """A table Citus would distribute, and the column it is distributed by."""

    name: str
    column: str


_TABLES = text(
    """
    SELECT c.relname AS name,
           EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                   AND a.attname = :tenant_column AND NOT a.attisdropped) AS has_tenant,
           (SELECT a.attnotnull FROM pg_attribute a WHERE a.attrelid = c.oid
                   AND a.attname = :tenant_column AND NOT a.attisdropped) AS tenant_not_null
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
    ORDER BY c.relname
    """
)

# Every unique index (primary keys and unique constraints are backed by one), with its key
# columns by name (NULL for an expression) and whether it backs a constraint.
_UNIQUE_INDEXES = text(
    """
    SELECT t.relname AS table_name, i.relname AS index_name,
           array(SELECT a.attname FROM unnest(x.indkey[0:x.indnkeyatts - 1]) AS k(attnum)
                 LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
                 WHERE k.attnum <> 0) AS columns,
           x.indisprimary AS is_primary
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
    WHERE n.nspname = current_schema() AND x.indisunique
    """
)

# Every foreign key, its columns and the referenced columns, position by position.
_FOREIGN_KEYS = text(
    """
    SELECT con.conname AS name, src.relname AS table_name, dst.relname AS referenced_table,
           array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, i)
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                 ORDER BY k.i) AS columns,
           array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, i)
                 JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
                 ORDER BY k.i) AS referenced_columns
    FROM pg_constraint con
    JOIN pg_class src ON src.oid = con.conrelid
    JOIN pg_class dst ON dst.oid = con.confrelid
    JOIN pg_namespace n ON n.oid = src.relnamespace
    WHERE n.nspname = current_schema() AND con.contype = 'f'
    """
)

# Exclusion constraints are unique-like: Citus requires the distribution column in them too.
_EXCLUSION_CONSTRAINTS = text(
    """
    SELECT con.conname AS name, src.relname AS table_name,
           array(SELECT a.attname FROM unnest(con.conkey) AS k(attnum)
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum)
           AS columns
    FROM pg_constraint con
    JOIN pg_class src ON src.oid = con.conrelid
    JOIN pg_namespace n ON n.oid = src.relnamespace
    WHERE n.nspname = current_schema() AND con.contype = 'x'
    """
)


def distributed_tables(connection: Connection) -> dict[str, DistributedTable]:
    """The tables of the current schema Citus would distribute, by name."""
    rows = (connection.execute(_TABLES, {"tenant_column": TENANT_COLUMN})).all()
    tables = {}
    for row in rows:
        if row.name == TENANTS_TABLE:
            tables[row.name] = DistributedTable(row.name, "id")
        elif row.has_tenant:
            tables[row.name] = DistributedTable(row.name, TENANT_COLUMN)
    return tables


def rule_violations(connection: Connection) -> list[str]:
    """Every way the current schema breaks a Citus rule, one line each (empty: none)."""
    rows = (connection.execute(_TABLES, {"tenant_column": TENANT_COLUMN})).all()
    distributed = distributed_tables(connection)
    problems: list[str] = []
    for row in rows:
        if row.name in distributed:
            if row.name != TENANTS_TABLE and not row.tenant_not_null:
                problems.append(f"{row.name}: {TENANT_COLUMN} must be NOT NULL")
        elif row.name not in REFERENCE_TABLES | COORDINATOR_TABLES:
            problems.append(
                f"{row.name}: no {TENANT_COLUMN} column; add one (a tenant table) or name it in "
                "REFERENCE_TABLES or COORDINATOR_TABLES (app/database/citus.py)"
            )
    problems += _unique_problems(connection, distributed)
    problems += _foreign_key_problems(connection, distributed)
    return problems


def _unique_problems(connection: Connection, distributed: dict[str, DistributedTable]) -> list[str]:
    problems = []
    keyed = set()
    for index in (connection.execute(_UNIQUE_INDEXES)).all():
        table = distributed.get(index.table_name)
        if table is None:
            continue
        if index.is_primary:
            keyed.add(table.name)
        if table.column not in index.columns:
            kind = "primary key" if index.is_primary else "unique index"
            problems.append(
                f"{table.name}: {kind} {index.index_name} ({', '.join(map(str, index.columns))}) "
                f"lacks the distribution column {table.column}"
            )
    for exclusion in (connection.execute(_EXCLUSION_CONSTRAINTS)).all():
        table = distributed.get(exclusion.table_name)
        if table is not None and table.column not in exclusion.columns:
            problems.append(
                f"{table.name}: exclusion constraint {exclusion.name} lacks the distribution "
                f"column {table.column}"
            )
    problems += [
        f"{name}: no primary key (Citus needs one containing {table.column} for co-location)"
        for name, table in distributed.items()
        if name not in keyed
    ]
    return problems


def _foreign_key_problems(
    connection: Connection, distributed: dict[str, DistributedTable]
) -> list[str]:
    problems = []
    for key in (connection.execute(_FOREIGN_KEYS)).all():
        source = distributed.get(key.table_name)
        target = distributed.get(key.referenced_table)
        if source is None and target is not None:
            problems.append(
                f"{key.table_name}: foreign key {key.name} points from a non-distributed table "
                f"at the distributed {target.name}"
            )
        if source is None or target is None:
            continue  # to a reference table (allowed), or between non-distributed tables
        pairs = list(zip(key.columns, key.referenced_columns, strict=True))
        if (source.column, target.column) not in pairs:
            problems.append(
                f"{source.name}: foreign key {key.name} ({', '.join(key.columns)}) -> "
                f"{target.name} ({', '.join(key.referenced_columns)}) does not match "
                f"{source.column} to {target.column}"
            )
    return problems
