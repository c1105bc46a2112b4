"""Policies read the tenant context once per statement and let the planner use tenant indexes."""

from __future__ import annotations

from typing import Any

import psycopg

from testkit import database_harness as harness
from tests.conftest import MigratedDatabase

TENANTS = 20
DOCUMENTS_EACH = 200

_SEED = """
WITH t AS (
    INSERT INTO tenants (name) SELECT 'plan-' || g FROM generate_series(1, %(tenants)s) g
    RETURNING id
), u AS (
    INSERT INTO users (tenant_id, email) SELECT id, 'planner@example.org' FROM t
    RETURNING tenant_id, id
)
INSERT INTO documents (tenant_id, user_id, s3_key, s3_bucket, filename, content_type, size_bytes)
SELECT u.tenant_id, u.id, 'k/' || g, 'b', 'f.pdf', 'application/pdf', g
FROM u, generate_series(1, %(documents)s) g
RETURNING tenant_id
"""


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(_nodes(child))
    return found


def test_tenant_scoped_listing_uses_the_tenant_index_and_an_initplan(
    migrated_db: MigratedDatabase,
) -> None:
    # Everything happens in one transaction that is rolled back: seed rows (as the superuser,
    # which RLS does not bind), gather statistics, then plan as app_runtime under a tenant.
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as conn:
        tenant_id = conn.execute(
            _SEED, {"tenants": TENANTS, "documents": DOCUMENTS_EACH}
        ).fetchone()[0]  # type: ignore[index]
        conn.execute("ANALYZE tenants, users, documents")
        conn.execute("SET LOCAL ROLE app_runtime")
        conn.execute("SELECT set_config('app.current_tenant_id', %s, true)", (str(tenant_id),))
        query = (
            "SELECT id, filename FROM documents WHERE deleted_at IS NULL"
            " ORDER BY created_at DESC, id DESC LIMIT 20"
        )
        plan = conn.execute(f"EXPLAIN (FORMAT JSON) {query}").fetchone()[0][0]["Plan"]  # type: ignore[index]
        rows = conn.execute(query).fetchall()
        counted = conn.execute("SELECT count(*) FROM documents").fetchone()
        conn.rollback()

    nodes = _nodes(plan)
    index_scans = [n for n in nodes if n.get("Index Name", "").startswith("idx_documents_tenant_")]
    assert index_scans, plan
    scan = index_scans[0]
    assert scan["Index Name"] == "idx_documents_tenant_created"
    # The policy's tenant lookup is an InitPlan: evaluated once, its result fed to the index.
    initplans = [n for n in nodes if n.get("Parent Relationship") == "InitPlan"]
    assert initplans, plan
    assert "InitPlan" in scan["Index Cond"] or "$0" in scan["Index Cond"], scan["Index Cond"]
    assert "tenant_id" in scan["Index Cond"]
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], plan
    assert len(rows) == 20
    assert counted == (DOCUMENTS_EACH,)
