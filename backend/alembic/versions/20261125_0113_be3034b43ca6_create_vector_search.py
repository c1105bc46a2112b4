"""Vector search that is right for every tenant size: a tenant index and `search_documents()`.

One HNSW index serves every tenant and RLS filters what it returns, so `ORDER BY
embedding_vector <=> q LIMIT k` finds almost nothing for a small tenant (the index hands back
its best ~40 candidates from the whole table; RLS drops the other tenants' ones).
`search_documents()` picks the strategy per call, in one round trip:

- It counts the rows the search may return (this tenant's active, embedded documents that pass
  the filters), bounded: `LIMIT exact_limit + 1` on `idx_documents_tenant_embedded`, an
  index-only scan without filters. exact_limit = max(exact_min_rows, hnsw_min_share * rows in
  the HNSW index), the index's row count coming from the catalog.
- Up to exact_limit rows: an exact scan of them (recall 1; a few ms at most).
- More: the HNSW index with iterative scan (relaxed order, re-sorted), which at that share of
  the index finds the true nearest rows; if it still returns fewer than k (max_scan_tuples
  reached), the exact scan runs instead, so a filter never starves the result.

The thresholds are arguments, so the application owns them (app/database/vector_search.py).
The planner and HNSW settings are SET clauses of the function: PostgreSQL applies them on
entry and restores them on exit, so they never reach the caller's transaction or the pooled
connection. `enable_sort = off` keeps the planner on the HNSW index for the large-tenant query
(it would otherwise estimate an average tenant and sort one of its rows by itself); the exact
queries have no plan without a sort, so it doesn't change them. SECURITY INVOKER (the default):
RLS applies to the caller as for any query, and the explicit tenant predicate matches it.

Revision ID: be3034b43ca6
Revises: a7b8c9d0e1f2
Create Date: 2026-11-25 01:13:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "be3034b43ca6"
down_revision: str | None = "a7b8c9d0e1f2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = (
    "search_documents(vector, integer, text, text, jsonb, integer, double precision, integer,"
    " integer)"
)

# The conditions every query of the function applies: the tenant's active, embedded documents
# that pass the (optional) filters.
SEARCHABLE = """
    d.tenant_id = tenant
    AND d.embedding_vector IS NOT NULL AND d.deleted_at IS NULL
    AND (status_filter IS NULL OR d.status = status_filter)
    AND (content_type_filter IS NULL OR d.content_type = content_type_filter)
    AND (metadata_filter IS NULL OR d.metadata @> metadata_filter)
"""

EXACT = f"""
        RETURN QUERY
            SELECT scored.id, scored.distance, 'exact'::text
            FROM (
                SELECT d.id, d.embedding_vector <=> query AS distance
                FROM public.documents d
                WHERE {SEARCHABLE}
                OFFSET 0  -- keeps the ORDER BY off the HNSW index: this scan is exact
            ) AS scored
            ORDER BY scored.distance, scored.id
            LIMIT k;
"""

FUNCTION = f"""
CREATE FUNCTION search_documents(
    query vector,
    k integer,
    status_filter text,
    content_type_filter text,
    metadata_filter jsonb,
    exact_min_rows integer,
    hnsw_min_share double precision,
    ef_search integer,
    max_scan_tuples integer
) RETURNS TABLE (id uuid, distance double precision, strategy text)
LANGUAGE plpgsql VOLATILE ROWS 10
SET search_path = pg_catalog, public
SET enable_sort = off
SET hnsw.iterative_scan = relaxed_order
SET hnsw.ef_search = 100
SET hnsw.max_scan_tuples = 20000
AS $function$
DECLARE
    tenant uuid := NULLIF(current_setting('app.current_tenant_id', true), '')::uuid;
    exact_limit integer;
    searchable integer;
    found_ids uuid[];
    found_distances double precision[];
BEGIN
    SELECT greatest(exact_min_rows, ceil(greatest(c.reltuples, 0) * hnsw_min_share)::integer)
    INTO exact_limit
    FROM pg_class c
    WHERE c.oid = 'public.idx_documents_embedding_hnsw'::regclass;

    IF status_filter IS NULL AND content_type_filter IS NULL AND metadata_filter IS NULL THEN
        -- A separate statement so its plan is the index-only scan of the tenant index.
        SELECT count(*) INTO searchable FROM (
            SELECT 1 FROM public.documents d
            WHERE d.tenant_id = tenant
                AND d.embedding_vector IS NOT NULL AND d.deleted_at IS NULL
            LIMIT exact_limit + 1
        ) AS bounded;
    ELSE
        SELECT count(*) INTO searchable FROM (
            SELECT 1 FROM public.documents d WHERE {SEARCHABLE} LIMIT exact_limit + 1
        ) AS bounded;
    END IF;

    IF searchable > exact_limit THEN
        PERFORM set_config('hnsw.ef_search', greatest(ef_search, k)::text, true),
                set_config('hnsw.max_scan_tuples', max_scan_tuples::text, true);
        -- relaxed_order may return rows slightly out of order: sorted again here.
        SELECT array_agg(found.id ORDER BY found.distance, found.id),
               array_agg(found.distance ORDER BY found.distance, found.id)
        INTO found_ids, found_distances
        FROM (
            SELECT d.id, d.embedding_vector <=> query AS distance
            FROM public.documents d
            WHERE {SEARCHABLE}
            ORDER BY d.embedding_vector <=> query
            LIMIT k
        ) AS found;
        IF coalesce(array_length(found_ids, 1), 0) >= k THEN
            RETURN QUERY
                SELECT hit.id, hit.distance, 'hnsw'::text
                FROM unnest(found_ids, found_distances) AS hit (id, distance);
            RETURN;
        END IF;
        -- The iterative scan gave up (max_scan_tuples) short of k rows: scan exactly.
    END IF;
{EXACT}
END
$function$
"""


def upgrade() -> None:
    op.create_index(
        "idx_documents_tenant_embedded",
        "documents",
        ["tenant_id"],
        postgresql_where=sa.text("embedding_vector IS NOT NULL AND deleted_at IS NULL"),
    )
    # The function's SET clauses name pgvector's hnsw.* settings, which exist only once the
    # extension's library is loaded in this session; a non-superuser may not set them as
    # unknown placeholders. Any vector value loads it.
    op.execute("SELECT '[0]'::vector")
    op.execute(FUNCTION)
    op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {SIGNATURE} TO app_runtime")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
    op.drop_index("idx_documents_tenant_embedded", table_name="documents")
