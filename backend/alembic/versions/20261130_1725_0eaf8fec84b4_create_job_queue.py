"""The job queue: procrastinate's schema, and the one narrow door app_runtime has into it.

Issue 19: storing content enqueues an ingestion job in the same transaction. The queue is
procrastinate's (PostgreSQL tables, LISTEN/NOTIFY, retries), its schema applied from the
installed package (procrastinate 3.10's `sql/schema.sql`; a later procrastinate upgrade comes
with a migration applying its `sql/migrations/` deltas).

The queue tables hold no PHI (a job's args are a tenant id and a document id) and belong to
no tenant, so they get grants rather than RLS: app_runtime holds no privilege on them at all.
It may only call, inside its tenant transaction:
- enqueue_document_ingest(document): defers one `ingest_document` job under the *current*
  tenant (the tenant id in the job comes from the context, never from the caller; the worker
  reads the document under RLS as that tenant, so another tenant's id finds nothing); a job
  already waiting for the same document is reused (procrastinate's queueing lock).
- tenant_ingest_jobs(): the current tenant's jobs (status, attempts, times), for its admins.
Both are SECURITY DEFINER, run as the migrations' login, with a fixed search_path. The worker's
queue connection logs in as that login too; the jobs' work runs as app_runtime.

Revision ID: 0eaf8fec84b4
Revises: 70f96b4acd31
Create Date: 2026-11-30 17:25:00
"""

from collections.abc import Sequence
from importlib import resources

from alembic import op

revision: str = "0eaf8fec84b4"
down_revision: str | None = "70f96b4acd31"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('app.current_tenant_id', true), '')::uuid"

ENQUEUE = f"""
CREATE FUNCTION enqueue_document_ingest(document uuid) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    tenant uuid := {CURRENT_TENANT};
    job_id bigint;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'enqueue_document_ingest: no tenant context' USING ERRCODE = '42501';
    END IF;
    BEGIN
        SELECT ids[1] INTO job_id FROM procrastinate_defer_jobs_v1(ARRAY[ROW(
            'ingest', 'ingest_document', 0, 'ingest:' || document, 'ingest:' || document,
            jsonb_build_object('tenant_id', tenant, 'document_id', document), NULL
        )::procrastinate_job_to_defer_v1]) AS ids;
    EXCEPTION WHEN unique_violation THEN
        -- A job for this document is already waiting: it will read the content as it is now.
        SELECT j.id INTO job_id FROM procrastinate_jobs j
        WHERE j.queueing_lock = 'ingest:' || document AND j.status = 'todo';
    END;
    RETURN job_id;
END
$$
"""

TENANT_JOBS = f"""
CREATE FUNCTION tenant_ingest_jobs(status_filter text, max_rows integer)
RETURNS TABLE (id bigint, document_id uuid, status text, attempts integer,
               scheduled_at timestamptz, last_event text, last_event_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT j.id, (j.args ->> 'document_id')::uuid, j.status::text, j.attempts, j.scheduled_at,
           e.type::text, e.at
    FROM procrastinate_jobs j
    LEFT JOIN LATERAL (
        SELECT ev.type, ev.at FROM procrastinate_events ev
        WHERE ev.job_id = j.id ORDER BY ev.at DESC, ev.id DESC LIMIT 1
    ) e ON true
    WHERE j.task_name = 'ingest_document'
        AND j.args ->> 'tenant_id' = ({CURRENT_TENANT})::text
        AND (status_filter IS NULL OR j.status::text = status_filter)
    ORDER BY j.id DESC
    LIMIT least(greatest(max_rows, 1), 1000)
$$
"""


def upgrade() -> None:
    schema = resources.files("procrastinate.sql").joinpath("schema.sql").read_text()
    # As the driver gets it (procrastinate's SQL is no text() template; % is psycopg's).
    op.get_bind().exec_driver_sql(schema.replace("%", "%%"))
    # procrastinate's trigger functions run as whoever writes a job; like ours, they must not
    # resolve names through the caller's search_path.
    op.execute(
        """
        DO $$
        DECLARE item record;
        BEGIN
            FOR item IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
                WHERE p.proname LIKE 'procrastinate\\_%' AND p.pronamespace = 'public'::regnamespace
            LOOP
                EXECUTE 'ALTER FUNCTION ' || item.signature
                    || ' SET search_path = pg_catalog, public';
            END LOOP;
        END
        $$
        """
    )
    op.execute(ENQUEUE)
    op.execute(TENANT_JOBS)
    for signature in ("enqueue_document_ingest(uuid)", "tenant_ingest_jobs(text, integer)"):
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO app_runtime")


def downgrade() -> None:
    op.execute("DROP FUNCTION tenant_ingest_jobs(text, integer)")
    op.execute("DROP FUNCTION enqueue_document_ingest(uuid)")
    op.execute(
        """
        DO $$
        DECLARE item record;
        BEGIN
            -- Functions first (CASCADE takes the queue's triggers), then tables, then types.
            FOR item IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
                WHERE p.proname LIKE 'procrastinate\\_%' AND p.pronamespace = 'public'::regnamespace
            LOOP
                EXECUTE 'DROP FUNCTION ' || item.signature || ' CASCADE';
            END LOOP;
            DROP TABLE procrastinate_events, procrastinate_periodic_defers,
                procrastinate_jobs, procrastinate_workers;
            DROP TYPE procrastinate_job_to_defer_v1, procrastinate_job_status,
                procrastinate_job_event_type;
        END
        $$
        """
    )
