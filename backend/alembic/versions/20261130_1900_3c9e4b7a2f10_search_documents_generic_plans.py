"""search_documents(): generic plans, no catalog query without an index, no count unfiltered.

Every partial index on `documents` adds to the planning of every query on it: the planner checks
each index's predicate. With one HNSW index per large tenant (issue 16), the app's
plan_cache_mode = force_custom_plan made search_documents() plan its static statements on every
call: measured with 400 per-tenant indexes, a 1-row tenant's search took 5.2 ms against 1.5 ms
for a plain exact scan (0.7 against 0.45 ms with none). With generic plans inside the function,
1.5 ms (docs/VECTOR_SEARCH.md).

A generic plan is safe here: the statements it covers (the catalog lookup, the bounded count and
the exact scan) read the tenant's rows through idx_documents_tenant_embedded, and a generic plan
can never prove a per-tenant index's predicate, so it never walks one. The HNSW walk is dynamic
SQL (EXECUTE), planned on every call with the tenant id as a literal, as before.

The tenant's index is found with to_regclass (a catalog-cache lookup) before pg_index is read,
so a tenant without one (most tenants) runs no catalog query at all. An unfiltered search of a
tenant with a valid index of its own walks it without counting first: every searchable row is in
the index, and the count (up to 5 % of the index) cost a walk's worth of time again. A filtered
one still counts, to scan exactly when the filters keep few rows.

Revision ID: 3c9e4b7a2f10
Revises: 7a3e9b2c1d48
Create Date: 2026-11-30 19:00:00
"""

import runpy
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "3c9e4b7a2f10"
down_revision: str | None = "7a3e9b2c1d48"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREVIOUS_MIGRATION = "20261130_1440_5d2e8f1a9c37_search_tenant_own_vector_index.py"
PREVIOUS_FUNCTION: str = runpy.run_path(str(Path(__file__).with_name(PREVIOUS_MIGRATION)))[
    "FUNCTION"
]
# The function's settings are SET clauses: restored on exit, so nothing leaks to the caller.
GENERIC_PLANS = "SET plan_cache_mode = force_generic_plan\n"
COUNT = """        SELECT count(*) INTO searchable FROM (
            SELECT 1 FROM public.documents d
            WHERE d.tenant_id = tenant
                AND d.embedding_vector IS NOT NULL AND d.deleted_at IS NULL
"""
COUNT_ONLY_WHEN_FILTERED = """        IF status_filter IS NULL AND content_type_filter IS NULL
                AND metadata_filter IS NULL THEN
            -- Unfiltered: every searchable row is in the index; walk it (exact again if the
            -- walk comes back short of k).
            searchable := exact_limit + 1;
        ELSE
""" + COUNT.replace("\n        ", "\n            ").replace(
    "        SELECT", "            SELECT", 1
)
COUNT_END = "        ) AS bounded;\n"
LOOKUP = """    SELECT c.reltuples INTO index_rows
    FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
    WHERE c.relname = 'idx_documents_hnsw_tenant_' || replace(tenant::text, '-', '')
        AND c.relnamespace = 'public'::regnamespace
        AND i.indrelid = 'public.documents'::regclass
        AND i.indisvalid AND i.indisready AND i.indislive;

    IF FOUND THEN
"""
# to_regclass is a catalog-cache lookup, no statement: a tenant without an index of its own
# (most tenants) goes straight to its exact scan.
LOOKUP_BY_NAME = """    own_index := to_regclass(
        'public.idx_documents_hnsw_tenant_' || replace(tenant::text, '-', ''));
    IF own_index IS NOT NULL THEN
        SELECT c.reltuples INTO index_rows
        FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
        WHERE c.oid = own_index
            AND i.indrelid = 'public.documents'::regclass
            AND i.indisvalid AND i.indisready AND i.indislive;
    END IF;

    IF index_rows IS NOT NULL THEN
"""
FUNCTION = (
    PREVIOUS_FUNCTION.replace(LOOKUP, LOOKUP_BY_NAME, 1)
    .replace("    index_rows real;\n", "    own_index regclass;\n    index_rows real;\n", 1)
    .replace("SET enable_sort = off\n", "SET enable_sort = off\n" + GENERIC_PLANS, 1)
    .replace(COUNT, COUNT_ONLY_WHEN_FILTERED, 1)
    .replace(COUNT_END, "            ) AS bounded;\n        END IF;\n", 1)
)
assert GENERIC_PLANS in FUNCTION
assert "own_index regclass;" in FUNCTION
assert "IF index_rows IS NOT NULL THEN" in FUNCTION
assert "searchable := exact_limit + 1;" in FUNCTION
assert "END IF;\n\n        IF searchable > exact_limit" in FUNCTION


def upgrade() -> None:
    # The SET clauses name pgvector's hnsw.* settings, known once its library is loaded.
    op.execute("SELECT '[0]'::vector")
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute("SELECT '[0]'::vector")
    op.execute(PREVIOUS_FUNCTION)
