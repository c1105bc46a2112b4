"""search_document_chunks(): a tenant's nearest chunks, through its own HNSW index or exactly.

The chunk twin of search_documents() (migration 5d2e8f1a9c37, docs/VECTOR_SEARCH.md): the
tenant's own partial index `idx_chunks_hnsw_tenant_<tenant id hex>` (built by `tenantdocs
vector-indexes`) when it exists and is valid, walked by dynamic SQL with the tenant id as a
literal so the planner can use it; otherwise an exact scan of the tenant's own chunks. No
search reads a structure holding another tenant's vectors.

Revision ID: 70f96b4acd31
Revises: c0c865bd1acf
Create Date: 2026-11-30 17:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "70f96b4acd31"
down_revision: str | None = "c0c865bd1acf"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = """
CREATE FUNCTION search_document_chunks(
    query vector,
    k integer,
    exact_min_rows integer,
    hnsw_min_share double precision,
    ef_search integer,
    max_scan_tuples integer
) RETURNS TABLE (id uuid, document_id uuid, distance double precision, strategy text)
LANGUAGE plpgsql VOLATILE ROWS 50
SET search_path = pg_catalog, public
SET enable_sort = off
SET hnsw.iterative_scan = relaxed_order
SET hnsw.ef_search = 100
SET hnsw.max_scan_tuples = 20000
AS $function$
DECLARE
    tenant uuid := NULLIF(current_setting('app.current_tenant_id', true), '')::uuid;
    index_rows real;
    found_ids uuid[];
    found_documents uuid[];
    found_distances double precision[];
BEGIN
    SELECT c.reltuples INTO index_rows
    FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
    WHERE c.relname = 'idx_chunks_hnsw_tenant_' || replace(tenant::text, '-', '')
        AND c.relnamespace = 'public'::regnamespace
        AND i.indrelid = 'public.document_chunks'::regclass
        AND i.indisvalid AND i.indisready AND i.indislive;

    IF FOUND AND index_rows > greatest(exact_min_rows, k) THEN
        PERFORM set_config('hnsw.ef_search', greatest(ef_search, k)::text, true),
                set_config('hnsw.max_scan_tuples', max_scan_tuples::text, true);
        EXECUTE format($walk$
            SELECT array_agg(found.id ORDER BY found.distance, found.id),
                   array_agg(found.document_id ORDER BY found.distance, found.id),
                   array_agg(found.distance ORDER BY found.distance, found.id)
            FROM (
                SELECT c.id, c.document_id, c.embedding <=> $1 AS distance
                FROM public.document_chunks c
                WHERE c.tenant_id = %L AND c.deleted_at IS NULL
                ORDER BY c.embedding <=> $1
                LIMIT $2
            ) AS found
        $walk$, tenant)
        INTO found_ids, found_documents, found_distances
        USING query, k;
        IF coalesce(array_length(found_ids, 1), 0) >= k THEN
            RETURN QUERY
                SELECT hit.id, hit.document_id, hit.distance, 'hnsw'::text
                FROM unnest(found_ids, found_documents, found_distances)
                    AS hit (id, document_id, distance);
            RETURN;
        END IF;
    END IF;

    RETURN QUERY
        SELECT scored.id, scored.document_id, scored.distance, 'exact'::text
        FROM (
            SELECT c.id, c.document_id, c.embedding <=> query AS distance
            FROM public.document_chunks c
            WHERE c.tenant_id = tenant AND c.deleted_at IS NULL
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
    op.execute(
        "REVOKE ALL ON FUNCTION search_document_chunks(vector, integer, integer,"
        " double precision, integer, integer) FROM PUBLIC"
    )
    op.execute(
        "GRANT EXECUTE ON FUNCTION search_document_chunks(vector, integer, integer,"
        " double precision, integer, integer) TO app_runtime"
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION search_document_chunks(vector, integer, integer, double precision,"
        " integer, integer)"
    )
