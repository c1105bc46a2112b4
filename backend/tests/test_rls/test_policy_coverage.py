"""Every tenant table of the model has forced RLS and a policy for each command app_runtime may run.

The walk starts from the model metadata, so a table added later with a `tenant_id` column is
checked without anyone remembering to add it here.

One kind of tenant table is different on purpose: one app_runtime holds no privilege on at all
(`audit_chain_heads`, written only by the SECURITY DEFINER chain trigger running as the table
owner). RLS is still enabled and forced on it, and its policies may name the table owner and
no one else; the tables of that kind are listed here by name, so a table can't drift into it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from app.database.base import Base
from app.models import AuditLog, Document, DocumentChunk, Tenant, User  # noqa: F401  (register the tables)
from testkit import database_harness as harness
from tests.conftest import MigratedDatabase

# pg_policy.polcmd: r = SELECT, a = INSERT, w = UPDATE, d = DELETE, * = ALL.
COMMAND_CODES = {"SELECT": "r", "INSERT": "a", "UPDATE": "w", "DELETE": "d"}
CONTEXT_LOOKUP = "current_setting('app.current_tenant_id'::text, true)"
# Tenant tables app_runtime may not touch in any way; their policies bind only the owner.
RUNTIME_INACCESSIBLE_TABLES = {"audit_chain_heads"}
# Every table privilege; the ones that exist per column too.
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
COLUMN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "REFERENCES")


def _tenant_tables() -> dict[str, str]:
    """Table name -> the column holding its tenant id, for every tenant-scoped model table."""
    tables = {}
    for table in Base.metadata.sorted_tables:
        if "tenant_id" in table.c:
            tables[table.name] = "tenant_id"
        elif table.name == "tenants":
            tables[table.name] = "id"
    return tables


def test_every_tenant_table_is_forced_and_covered_for_every_runtime_command(
    migrated_db: MigratedDatabase,
) -> None:
    tables = _tenant_tables()
    assert {"tenants", "users", "documents", "audit_logs"} <= set(tables)
    problems: list[str] = []
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as conn:
        runtime_oid = conn.execute("SELECT 'app_runtime'::regrole::oid").fetchone()[0]  # type: ignore[index]
        for table, tenant_column in tables.items():
            flags = conn.execute(
                "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass",
                (table,),
            ).fetchone()
            if flags != (True, True):
                problems.append(f"{table}: RLS enabled/forced = {flags}")
            policies = conn.execute(
                """
                SELECT polname, polcmd, polroles, polpermissive,
                       pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)
                FROM pg_policy WHERE polrelid = %s::regclass
                """,
                (table,),
            ).fetchall()
            runtime_privileges = _runtime_privileges(conn, table)
            if table in RUNTIME_INACCESSIBLE_TABLES:
                if runtime_privileges:
                    problems.append(f"{table}: app_runtime holds {sorted(runtime_privileges)}")
                owner_oid = conn.execute(
                    "SELECT relowner FROM pg_class WHERE oid = %s::regclass", (table,)
                ).fetchone()[0]  # type: ignore[index]
                for name, _, roles, _, _, _ in policies:
                    if roles != [owner_oid]:
                        problems.append(f"{table}.{name}: binds {roles}, not only the owner")
                continue
            for name, _, roles, permissive, using, check in policies:
                if runtime_oid not in roles:
                    problems.append(f"{table}.{name}: does not name app_runtime (TO {roles})")
                for expression in (using, check):
                    if expression is not None and (
                        tenant_column not in expression or CONTEXT_LOOKUP not in expression
                    ):
                        problems.append(f"{table}.{name}: not keyed on the tenant: {expression}")
                if not permissive:
                    problems.append(f"{table}.{name}: restrictive policies need a permissive one")
            if conn.execute(
                "SELECT has_table_privilege('app_runtime', %s, 'TRUNCATE')", (table,)
            ).fetchone() != (False,):
                problems.append(f"{table}: app_runtime may TRUNCATE, which RLS does not filter")
            for command, code in COMMAND_CODES.items():
                allowed = conn.execute(
                    "SELECT has_table_privilege('app_runtime', %(t)s, %(c)s) OR (%(c)s <> 'DELETE'"
                    " AND has_any_column_privilege('app_runtime', %(t)s, %(c)s))",
                    {"t": table, "c": command},
                ).fetchone() == (True,)
                if not allowed:
                    continue
                covering = [p for p in policies if p[1] in (code, "*") and runtime_oid in p[2]]
                if not covering:
                    problems.append(f"{table}: app_runtime may {command} but no policy covers it")
                for name, _, _, _, using, check in covering:
                    if command in ("SELECT", "UPDATE", "DELETE") and using is None:
                        problems.append(f"{table}.{name}: {command} without USING")
                    if command in ("INSERT", "UPDATE") and check is None:
                        problems.append(f"{table}.{name}: {command} without WITH CHECK")
    assert problems == []


def _runtime_privileges(conn: psycopg.Connection[Any], table: str) -> set[str]:
    """Every privilege app_runtime holds on `table`, on the whole table or on any column."""
    held = set()
    for privilege in TABLE_PRIVILEGES:
        query = "SELECT has_table_privilege('app_runtime', %(t)s, %(p)s)"
        if privilege in COLUMN_PRIVILEGES:
            query += " OR has_any_column_privilege('app_runtime', %(t)s, %(p)s)"
        if conn.execute(query, {"t": table, "p": privilege}).fetchone() == (True,):
            held.add(privilege)
    return held


def test_the_runtime_inaccessible_tables_are_exactly_the_tenant_tables_without_runtime_privilege(
    migrated_db: MigratedDatabase,
) -> None:
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as conn:
        without_privilege = {
            table for table in _tenant_tables() if not _runtime_privileges(conn, table)
        }
        policy_roles = conn.execute(
            "SELECT polname, polroles = ARRAY[c.relowner] FROM pg_policy p"
            " JOIN pg_class c ON c.oid = p.polrelid WHERE c.relname = 'audit_chain_heads'"
        ).fetchall()
    assert without_privilege == RUNTIME_INACCESSIBLE_TABLES
    assert policy_roles == [("audit_chain_head_owner_policy", True)]


def test_runtime_commands_per_table_are_exactly_the_intended_ones(
    migrated_db: MigratedDatabase,
) -> None:
    expected = {
        "tenants": {"SELECT"},
        "users": {"SELECT", "INSERT", "UPDATE"},
        "documents": {"SELECT", "INSERT", "UPDATE"},
        "audit_logs": {"SELECT", "INSERT"},
        "audit_chain_heads": set(),
        "document_chunks": {"SELECT", "INSERT", "UPDATE"},
    }
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as conn:
        granted = {
            table: {
                command
                for command in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
                if conn.execute(
                    "SELECT has_table_privilege('app_runtime', %(t)s, %(c)s)"
                    " OR (%(c)s IN ('SELECT', 'INSERT', 'UPDATE')"
                    "     AND has_any_column_privilege('app_runtime', %(t)s, %(c)s))",
                    {"t": table, "c": command},
                ).fetchone()
                == (True,)
            }
            for table in expected
        }
        updatable_tenant_column = conn.execute(
            "SELECT table_name FROM information_schema.column_privileges"
            " WHERE grantee = 'app_runtime' AND privilege_type = 'UPDATE'"
            "   AND column_name IN ('tenant_id', 'id', 'user_id', 'created_at')"
        ).fetchall()
    assert granted == expected
    assert updatable_tenant_column == []  # keys and ownership are never rewritten by requests


def test_only_the_provisioning_role_hard_deletes_and_only_what_erasure_needs(
    migrated_db: MigratedDatabase,
) -> None:
    """Offboarding and the retention purge erase users and documents (with their chunks) as
    app_admin, and the expiry purge removes Idempotency-Key records; nothing else is ever
    deleted (the audit log and its heads are append-only, tenants stay as tombstones), and
    app_runtime deletes nothing at all (a re-ingest replaces chunks through a function)."""
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as conn:
        deletable = {
            role: {
                table
                for table in (*_tenant_tables(), "alembic_version")
                for privilege in ("DELETE", "TRUNCATE")
                if conn.execute(
                    "SELECT has_table_privilege(%s, %s, %s)", (role, table, privilege)
                ).fetchone()
                == (True,)
            }
            for role in ("app_runtime", "app_admin")
        }
        truncatable_by_admin = conn.execute(
            "SELECT has_table_privilege('app_admin', 'documents', 'TRUNCATE')"
        ).fetchone()
    assert deletable == {
        "app_runtime": set(),
        "app_admin": {"users", "documents", "document_chunks", "idempotency_keys"},
    }
    assert truncatable_by_admin == (False,)
