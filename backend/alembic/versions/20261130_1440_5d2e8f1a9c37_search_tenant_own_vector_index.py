"""search_documents() reads only the tenant's own structures: its own HNSW index, or its rows.

Issue 16: one HNSW index shared by every tenant let other tenants' vectors decide what a
search finds (recall 0.5-0.9 on dense clusters) and how long it takes (a timing channel), and
the exact/HNSW switch depended on the size of everyone's data. Now:

- A tenant has an HNSW index of its own when the maintenance command (`tenantdocs
  vector-indexes`, app/services/vector_indexes.py) built one: a partial index named
  `idx_documents_hnsw_tenant_<tenant id hex>` WHERE tenant_id = '<id>' AND embedding_vector
  IS NOT NULL AND deleted_at IS NULL. The function looks it up in the catalog and uses it only
  if it is valid (pg_index.indisvalid AND indisready AND indislive): while CREATE INDEX
  CONCURRENTLY runs, or after one failed half way (an INVALID index), the tenant is scanned
  exactly.
- With an index, a bounded count of the rows the search may return (filters applied) decides:
  more than max(exact_min_rows, hnsw_min_share * the index's rows) walks the tenant's index
  (iterative scan, re-sorted; exact again if it comes back short of k); fewer are scanned
  exactly, because an iterative scan loses recall when the filter keeps a small share of the
  graph.
- Without one: an exact scan of the tenant's rows through idx_documents_tenant_embedded.

The index walk is dynamic SQL with the tenant id as a literal: the planner only uses a
partial index whose predicate the query's WHERE implies, and a parameter (or a PL/pgSQL
variable in a generic plan) implies nothing. The literal is the validated uuid from the
tenant context, quoted with format(%L).

Same signature as before (the thresholds stay the application's), so the downgrade restores
be3034b43ca6's body.

Revision ID: 5d2e8f1a9c37
Revises: 68717d7c8021
Create Date: 2026-11-30 14:40:00
"""

import runpy
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "5d2e8f1a9c37"
down_revision: str | None = "68717d7c8021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREVIOUS_MIGRATION = "20261125_0113_be3034b43ca6_create_vector_search.py"

# The tenant's searchable rows that pass the (optional) filters; $2-$4 are the filters in
# the dynamic statement, the plain names in the static ones.
FILTERS = """
    AND (status_filter IS NULL OR d.status = status_filter)
    AND (content_type_filter IS NULL OR d.content_type = content_type_filter)
    AND (metadata_filter IS NULL OR d.metadata @> metadata_filter)
"""

FUNCTION = f"""
CREATE OR REPLACE FUNCTION search_documents(
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
    index_rows real;
    exact_limit integer;
    searchable integer;
    found_ids uuid[];
    found_distances double precision[];
BEGIN
    -- The tenant's own index, if it is built and valid (never one that is being built or
    -- that a failed CREATE INDEX CONCURRENTLY left INVALID).
    SELECT c.reltuples INTO index_rows
    FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
    WHERE c.relname = 'idx_documents_hnsw_tenant_' || replace(tenant::text, '-', '')
        AND c.relnamespace = 'public'::regnamespace
        AND i.indrelid = 'public.documents'::regclass
        AND i.indisvalid AND i.indisready AND i.indislive;

    IF FOUND THEN
        exact_limit := greatest(exact_min_rows, k,
                                ceil(greatest(index_rows, 0) * hnsw_min_share)::integer);
        SELECT count(*) INTO searchable FROM (
            SELECT 1 FROM public.documents d
            WHERE d.tenant_id = tenant
                AND d.embedding_vector IS NOT NULL AND d.deleted_at IS NULL
                {FILTERS}
            LIMIT exact_limit + 1
        ) AS bounded;

        IF searchable > exact_limit THEN
            PERFORM set_config('hnsw.ef_search', greatest(ef_search, k)::text, true),
                    set_config('hnsw.max_scan_tuples', max_scan_tuples::text, true);
            -- relaxed_order may return rows slightly out of order: sorted again here.
            EXECUTE format($walk$
                SELECT array_agg(found.id ORDER BY found.distance, found.id),
                       array_agg(found.distance ORDER BY found.distance, found.id)
                FROM (
                    SELECT d.id, d.embedding_vector <=> $1 AS distance
                    FROM public.documents d
                    WHERE d.tenant_id = %L
                        AND d.embedding_vector IS NOT NULL AND d.deleted_at IS NULL
                        AND ($2 IS NULL OR d.status = $2)
                        AND ($3 IS NULL OR d.content_type = $3)
                        AND ($4 IS NULL OR d.metadata @> $4)
                    ORDER BY d.embedding_vector <=> $1
                    LIMIT $5
                ) AS found
            $walk$, tenant)
            INTO found_ids, found_distances
            USING query, status_filter, content_type_filter, metadata_filter, k;
            IF coalesce(array_length(found_ids, 1), 0) >= k THEN
                RETURN QUERY
                    SELECT hit.id, hit.distance, 'hnsw'::text
                    FROM unnest(found_ids, found_distances) AS hit (id, distance);
                RETURN;
            END IF;
            -- The iterative scan gave up (max_scan_tuples) short of k rows: scan exactly.
        END IF;
    END IF;

    RETURN QUERY
        SELECT scored.id, scored.distance, 'exact'::text
        FROM (
            SELECT d.id, d.embedding_vector <=> query AS distance
            FROM public.documents d
            WHERE d.tenant_id = tenant
                AND d.embedding_vector IS NOT NULL AND d.deleted_at IS NULL
                {FILTERS}
            OFFSET 0  -- keeps the ORDER BY off any HNSW index: this scan is exact
        ) AS scored
        ORDER BY scored.distance, scored.id
        LIMIT k;
END
$function$
"""


def upgrade() -> None:
    # The SET clauses name pgvector's hnsw.* settings, known once its library is loaded.
    op.execute("SELECT '[0]'::vector")
    op.execute(FUNCTION)


def downgrade() -> None:
    previous = runpy.run_path(str(Path(__file__).with_name(PREVIOUS_MIGRATION)))
    op.execute("SELECT '[0]'::vector")
    op.execute(previous["FUNCTION"].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
