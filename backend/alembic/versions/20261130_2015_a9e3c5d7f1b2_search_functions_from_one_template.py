"""search_documents() and search_document_chunks() from one template; per-tenant ef_search.

Review debt (issue 16, issue 19): search_document_chunks() (migration 70f96b4acd31) was a
near-copy of search_documents() that missed its generic-plan fix (3c9e4b7a2f10), its lookup by
name and its filters. Both functions are now rendered from one template, `render()` below, for
one `SearchTable` each; the next change to either edits the template once.

What both do now (docs/VECTOR_SEARCH.md):

- The tenant's own HNSW index is found by name (to_regclass: no catalog query for a tenant
  without one) and used only if it is valid AND the maintenance command's recall probe recorded
  the `ef_search` that reaches recall@10 >= 0.99 on it, as the index's comment
  (`ef_search=<n> ...`, app/services/vector_indexes.py). An index that is being built, failed
  half way, or has not passed its probe yet is never walked: the tenant is scanned exactly.
- The walk runs at the recorded ef_search (at least k). The `ef_search` argument overrides it,
  for the probe only (which must walk an index before anything is recorded); the application
  passes NULL.
- Filters (status, content type, metadata containment) work for both: a chunk matches when its
  document does (issue 19: text search takes the filters raw-embedding search takes).
- Static statements use generic plans; the walk is dynamic SQL with the tenant id as a literal,
  so the planner can prove the partial index's predicate.

search_documents() keeps its signature (CREATE OR REPLACE); search_document_chunks() gains the
three filter arguments, so it is dropped and created again. The downgrade restores both
previous bodies.

Revision ID: a9e3c5d7f1b2
Revises: 7f3b9d1c5e42
Create Date: 2026-11-30 20:15:00
"""

import runpy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alembic import op

revision: str = "a9e3c5d7f1b2"
down_revision: str | None = "7f3b9d1c5e42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREVIOUS_DOCUMENTS_MIGRATION = "20261130_1900_3c9e4b7a2f10_search_documents_generic_plans.py"
PREVIOUS_CHUNKS_MIGRATION = "20261130_1720_70f96b4acd31_search_document_chunks.py"

ARGUMENTS = "vector, integer, text, text, jsonb, integer, double precision, integer, integer"


@dataclass(frozen=True)
class SearchTable:
    """What differs between the searches: the table, its vector, its rows, what a hit carries."""

    function: str
    table: str
    column: str
    index_prefix: str
    # The rows a search may return besides the tenant (the per-tenant index's predicate), on `r`.
    searchable: str
    # Columns a hit carries between its id and its distance: (name, type).
    carried: tuple[tuple[str, str], ...]
    # The filters on `r`, written with {status}, {content_type}, {metadata} for the values.
    filters: str
    rows_estimate: int


DOCUMENT_FILTERS = """
                AND ({status} IS NULL OR r.status = {status})
                AND ({content_type} IS NULL OR r.content_type = {content_type})
                AND ({metadata} IS NULL OR r.metadata @> {metadata})"""
# A chunk matches the filters when its document does (same tenant: the composite key).
CHUNK_FILTERS = """
                AND ({status} IS NULL AND {content_type} IS NULL AND {metadata} IS NULL
                    OR EXISTS (
                        SELECT 1 FROM public.documents d
                        WHERE d.tenant_id = r.tenant_id AND d.id = r.document_id
                            AND ({status} IS NULL OR d.status = {status})
                            AND ({content_type} IS NULL OR d.content_type = {content_type})
                            AND ({metadata} IS NULL OR d.metadata @> {metadata})))"""

DOCUMENTS = SearchTable(
    function="search_documents",
    table="documents",
    column="embedding_vector",
    index_prefix="idx_documents_hnsw_tenant_",
    searchable="r.embedding_vector IS NOT NULL AND r.deleted_at IS NULL",
    carried=(),
    filters=DOCUMENT_FILTERS,
    rows_estimate=10,
)
CHUNKS = SearchTable(
    function="search_document_chunks",
    table="document_chunks",
    column="embedding",
    index_prefix="idx_chunks_hnsw_tenant_",
    searchable="r.deleted_at IS NULL",
    carried=(("document_id", "uuid"),),
    filters=CHUNK_FILTERS,
    rows_estimate=50,
)


def render(table: SearchTable) -> str:
    """The CREATE OR REPLACE FUNCTION statement of `table`'s search."""
    static_filters = table.filters.format(
        status="status_filter", content_type="content_type_filter", metadata="metadata_filter"
    )
    # In the walk (format()'ed dynamic SQL) the filters are its USING parameters $2-$4.
    walk_filters = table.filters.format(status="$2", content_type="$3", metadata="$4")
    carried = "".join(f"{name} {kind}, " for name, kind in table.carried)
    carried_arrays = "".join(f"    found_{name}s {kind}[];\n" for name, kind in table.carried)
    carried_select = "".join(f"r.{name}, " for name, _ in table.carried)
    carried_aggregates = "".join(
        f"                       array_agg(found.{name} ORDER BY found.distance, found.id),\n"
        for name, _ in table.carried
    )
    distances = "array_agg(found.distance ORDER BY found.distance, found.id)"
    carried_into = "".join(f"found_{name}s, " for name, _ in table.carried)
    carried_unnest = "".join(f"found_{name}s, " for name, _ in table.carried)
    carried_hit = "".join(f"hit.{name}, " for name, _ in table.carried)
    carried_names = "".join(f"{name}, " for name, _ in table.carried)
    carried_scored = "".join(f"scored.{name}, " for name, _ in table.carried)
    return f"""
CREATE OR REPLACE FUNCTION {table.function}(
    query vector,
    k integer,
    status_filter text,
    content_type_filter text,
    metadata_filter jsonb,
    exact_min_rows integer,
    hnsw_min_share double precision,
    ef_search integer,
    max_scan_tuples integer
) RETURNS TABLE (id uuid, {carried}distance double precision, strategy text)
LANGUAGE plpgsql VOLATILE ROWS {table.rows_estimate}
SET search_path = pg_catalog, public
SET enable_sort = off
SET plan_cache_mode = force_generic_plan
SET hnsw.iterative_scan = relaxed_order
SET hnsw.ef_search = 100
SET hnsw.max_scan_tuples = 20000
AS $function$
DECLARE
    tenant uuid := NULLIF(current_setting('app.current_tenant_id', true), '')::uuid;
    own_index regclass;
    index_rows real;
    walk_ef_search integer;
    exact_limit integer;
    searchable integer;
    found_ids uuid[];
{carried_arrays}    found_distances double precision[];
BEGIN
    -- The tenant's own index, if it is valid and its probe recorded the ef_search that finds
    -- the true top 10 (never one being built, left INVALID, or not probed yet). The probe
    -- passes ef_search itself, to walk the index before anything is recorded.
    own_index := to_regclass(
        'public.{table.index_prefix}' || replace(tenant::text, '-', ''));
    IF own_index IS NOT NULL THEN
        SELECT c.reltuples,
               coalesce(ef_search,
                        substring(ds.description FROM 'ef_search=([0-9]+)')::integer)
        INTO index_rows, walk_ef_search
        FROM pg_class c
            JOIN pg_index i ON i.indexrelid = c.oid
            LEFT JOIN pg_description ds ON ds.objoid = c.oid
                AND ds.classoid = 'pg_class'::regclass AND ds.objsubid = 0
        WHERE c.oid = own_index
            AND i.indrelid = 'public.{table.table}'::regclass
            AND i.indisvalid AND i.indisready AND i.indislive;
    END IF;

    IF index_rows IS NOT NULL AND walk_ef_search IS NOT NULL THEN
        exact_limit := greatest(exact_min_rows, k,
                                ceil(greatest(index_rows, 0) * hnsw_min_share)::integer);
        IF status_filter IS NULL AND content_type_filter IS NULL
                AND metadata_filter IS NULL THEN
            -- Unfiltered: every searchable row is in the index; walk it (exact again if the
            -- walk comes back short of k).
            searchable := exact_limit + 1;
        ELSE
            -- Filtered: a selective filter keeps too small a share of the graph for the walk
            -- to find k rows reliably; count (bounded) and scan exactly if so.
            SELECT count(*) INTO searchable FROM (
                SELECT 1 FROM public.{table.table} r
                WHERE r.tenant_id = tenant AND {table.searchable}{static_filters}
                LIMIT exact_limit + 1
            ) AS bounded;
        END IF;

        IF searchable > exact_limit THEN
            PERFORM set_config('hnsw.ef_search', greatest(walk_ef_search, k)::text, true),
                    set_config('hnsw.max_scan_tuples', max_scan_tuples::text, true);
            -- relaxed_order may return rows slightly out of order: sorted again here.
            EXECUTE format($walk$
                SELECT array_agg(found.id ORDER BY found.distance, found.id),
{carried_aggregates}                       {distances}
                FROM (
                    SELECT r.id, {carried_select}r.{table.column} <=> $1 AS distance
                    FROM public.{table.table} r
                    WHERE r.tenant_id = %L AND {table.searchable}{walk_filters}
                    ORDER BY r.{table.column} <=> $1
                    LIMIT $5
                ) AS found
            $walk$, tenant)
            INTO found_ids, {carried_into}found_distances
            USING query, status_filter, content_type_filter, metadata_filter, k;
            IF coalesce(array_length(found_ids, 1), 0) >= k THEN
                RETURN QUERY
                    SELECT hit.id, {carried_hit}hit.distance, 'hnsw'::text
                    FROM unnest(found_ids, {carried_unnest}found_distances)
                        AS hit (id, {carried_names}distance);
                RETURN;
            END IF;
            -- The iterative scan gave up (max_scan_tuples) short of k rows: scan exactly.
        END IF;
    END IF;

    RETURN QUERY
        SELECT scored.id, {carried_scored}scored.distance, 'exact'::text
        FROM (
            SELECT r.id, {carried_select}r.{table.column} <=> query AS distance
            FROM public.{table.table} r
            WHERE r.tenant_id = tenant AND {table.searchable}{static_filters}
            OFFSET 0  -- keeps the ORDER BY off any HNSW index: this scan is exact
        ) AS scored
        ORDER BY scored.distance, scored.id
        LIMIT k;
END
$function$
"""


FUNCTIONS = {table.function: render(table) for table in (DOCUMENTS, CHUNKS)}


def upgrade() -> None:
    # The SET clauses name pgvector's hnsw.* settings, known once its library is loaded.
    op.execute("SELECT '[0]'::vector")
    op.execute(FUNCTIONS[DOCUMENTS.function])
    # The chunks' search gains the filter arguments: a new signature.
    op.execute(
        "DROP FUNCTION search_document_chunks(vector, integer, integer, double precision,"
        " integer, integer)"
    )
    op.execute(FUNCTIONS[CHUNKS.function])
    op.execute(f"REVOKE ALL ON FUNCTION {CHUNKS.function}({ARGUMENTS}) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {CHUNKS.function}({ARGUMENTS}) TO app_runtime")


def downgrade() -> None:
    op.execute("SELECT '[0]'::vector")
    documents = runpy.run_path(str(Path(__file__).with_name(PREVIOUS_DOCUMENTS_MIGRATION)))
    op.execute(documents["FUNCTION"])
    op.execute(f"DROP FUNCTION {CHUNKS.function}({ARGUMENTS})")
    chunks = runpy.run_path(str(Path(__file__).with_name(PREVIOUS_CHUNKS_MIGRATION)))
    chunks["upgrade"]()
