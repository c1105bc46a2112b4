"""Nothing in the schema runs with its owner's rights over tenant data: views, matviews, functions.

A view normally reads its base tables with the view owner's rights; the owner matches no
policy, so a definer view would show nothing — until someone creates one as a BYPASSRLS role,
and then it shows everything. Only `security_invoker` views apply the caller's policies.
Materialized views store a copy without any RLS at all.
"""

from __future__ import annotations

from typing import Any

import psycopg

from testkit import database_harness as harness
from tests.conftest import MigratedDatabase
from tests.test_security.conftest import TwoTenants

# Relations holding tenant data (the `tenants` table and every table with a tenant_id column),
# then, recursively, every view or materialized view built on one of them.
_VIEWS_OVER_TENANT_DATA = """
WITH RECURSIVE tenant_relations(oid) AS (
    SELECT c.oid
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%%'
      AND c.relkind IN ('r', 'p', 'f')
      AND (c.relname = 'tenants' OR EXISTS (
            SELECT 1 FROM pg_attribute a
            WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))
    UNION
    SELECT r.ev_class
    FROM pg_rewrite r
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
    JOIN tenant_relations t ON d.refclassid = 'pg_class'::regclass AND d.refobjid = t.oid
    WHERE r.ev_class <> d.refobjid
)
SELECT c.relname,
       c.relkind,
       EXISTS (
           SELECT 1 FROM unnest(coalesce(c.reloptions, '{}')) AS option
           WHERE lower(option) IN ('security_invoker=true', 'security_invoker=on',
                                   'security_invoker=1', 'security_invoker=yes')
       ) AS security_invoker
FROM pg_class c
JOIN tenant_relations t ON t.oid = c.oid
WHERE c.relkind IN ('v', 'm')
ORDER BY c.relname
"""


def unsafe_views_over_tenant_data(connection: psycopg.Connection[Any]) -> list[str]:
    """Views over tenant data without security_invoker, and every matview over tenant data."""
    unsafe = []
    for name, kind, invoker in connection.execute(_VIEWS_OVER_TENANT_DATA).fetchall():
        if kind == "m":
            unsafe.append(f"materialized view {name}")
        elif not invoker:
            unsafe.append(f"view {name} (not security_invoker)")
    return unsafe


def test_every_view_over_tenant_data_is_security_invoker_and_no_matview_holds_it(
    superuser: psycopg.Connection[Any],
) -> None:
    """The migrated schema has no definer view and no materialized view over tenant data."""
    assert unsafe_views_over_tenant_data(superuser) == []


def test_view_check_catches_definer_views_and_matviews(test_server: harness.TestServer) -> None:
    """In a throw-away database the check flags exactly the dangerous views (so it can fail)."""
    name = harness.create_database(test_server)
    try:
        with psycopg.connect(harness.libpq(test_server.url(name)), autocommit=True) as conn:
            conn.execute("CREATE TABLE tenants (id uuid PRIMARY KEY, name text)")
            conn.execute("CREATE TABLE notes (id uuid, tenant_id uuid, body text)")
            conn.execute("CREATE TABLE countries (code text)")
            conn.execute("CREATE VIEW definer_notes AS SELECT * FROM notes")
            conn.execute("CREATE VIEW definer_tenants AS SELECT name FROM tenants")
            conn.execute("CREATE VIEW invoker_notes WITH (security_invoker) AS SELECT * FROM notes")
            conn.execute(
                "CREATE VIEW nested_definer WITH (security_invoker = false) AS"
                " SELECT body FROM invoker_notes"
            )
            conn.execute("CREATE VIEW plain_countries AS SELECT * FROM countries")
            conn.execute("CREATE MATERIALIZED VIEW note_copy AS SELECT * FROM notes")
            flagged = unsafe_views_over_tenant_data(conn)
    finally:
        harness.drop_database(test_server, name)
    assert flagged == [
        "view definer_notes (not security_invoker)",
        "view definer_tenants (not security_invoker)",
        "view nested_definer (not security_invoker)",
        "materialized view note_copy",
    ]


def test_security_definer_functions_pin_search_path_and_are_not_public(
    superuser: psycopg.Connection[Any],
) -> None:
    """A SECURITY DEFINER function runs as its owner: it must pin search_path and not be PUBLIC."""
    unsafe = superuser.execute(
        """
        SELECT p.oid::regprocedure::text
        FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prosecdef
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND (NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) AS setting
                           WHERE setting LIKE 'search_path=%%')
               OR has_function_privilege('public', p.oid, 'EXECUTE'))
        """
    ).fetchall()
    assert unsafe == []


def test_runtime_role_cannot_read_planner_statistics_of_tenant_tables(
    migrated_db: MigratedDatabase, superuser: psycopg.Connection[Any], tenants: TwoTenants
) -> None:
    """pg_stats (most common values, histograms) hides RLS tables from the runtime role."""
    superuser.execute("ANALYZE users, documents, audit_logs, tenants")
    assert (
        superuser.execute("SELECT count(*) FROM pg_stats WHERE tablename = 'documents'").fetchone()[
            0
        ]
        > 0
    )  # type: ignore[index]
    with psycopg.connect(harness.libpq(migrated_db.runtime_url)) as runtime:
        visible = runtime.execute(
            "SELECT tablename, attname FROM pg_stats WHERE schemaname = 'public'"
            " AND tablename IN ('tenants', 'users', 'documents', 'audit_logs')"
        ).fetchall()
    assert visible == []
