"""The job queue (procrastinate, in PostgreSQL) and the ingestion task.

Enqueueing happens inside a request's tenant transaction through the database function
`enqueue_document_ingest(document)` (migration 0eaf8fec84b4): the job commits or rolls back
with the content row change, carries the tenant from the transaction's context, and app_runtime
needs no privilege on the queue tables. The worker's queue connection (fetching, retrying,
finishing jobs) logs in as DATABASE_URL's login; each job's work runs as app_runtime in tenant
transactions (app/services/ingest.py), so RLS holds in the worker as in a request.

Retries: a job that raises is retried with exponential backoff (2, 4, 8, ... s) up to
INGEST_MAX_ATTEMPTS attempts; the last failure marks the document `failed` and the job stays
`failed` in the queue, listed by `python -m app jobs` and `GET /api/v1/ingest-jobs` (admins).
Failures that a retry cannot fix (a key that no longer unwraps, tampered content, a missing
object) fail the document at once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import procrastinate
from procrastinate import JobContext, RetryStrategy
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from app.content.envelope import ContentIntegrityError
from app.content.key_manager import UnwrapError
from app.content.object_store import ObjectNotFoundError
from app.core.config import Settings
from app.services.actor import Actor

if TYPE_CHECKING:
    from app.services.ingest import IngestContext

QUEUE = "ingest"
INGEST_TASK = "ingest_document"
BACKOFF_BASE_SECONDS = 2
CONTEXT_KEY = "ingest"

# Failures a retry cannot fix: the document fails at once, with this reason.
_PERMANENT = {
    UnwrapError: "the content's key no longer opens it (key destroyed, or data tampered)",
    ContentIntegrityError: "the stored content failed its integrity check",
    ObjectNotFoundError: "the stored content is missing from object storage",
}


def libpq_url(url: URL) -> str:
    """A SQLAlchemy URL as the libpq URL procrastinate's psycopg pool takes."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def run_ingest_job(job_context: JobContext, tenant_id: str, document_id: str) -> str:
    """The `ingest_document` task: one document, as its tenant (see app/services/ingest.py)."""
    # Imported here: extraction and embedding (numpy, pypdf) are for the worker, not for every
    # request and command that only enqueues.
    from app.services import ingest

    context: IngestContext = job_context.additional_context[CONTEXT_KEY]
    tenant, document = uuid.UUID(tenant_id), uuid.UUID(document_id)
    attempt = job_context.job.attempts + 1
    try:
        outcome = await ingest.ingest_document(context, tenant, document)
    except tuple(_PERMANENT) as exc:
        reason = next(text for kind, text in _PERMANENT.items() if isinstance(exc, kind))
        return (await ingest.mark_failed(context, tenant, document, reason)).value
    except Exception as exc:
        if attempt >= context.settings.INGEST_MAX_ATTEMPTS:
            reason = f"processing failed {attempt} times; last error: {type(exc).__name__}"
            await ingest.mark_failed(context, tenant, document, reason)
        raise
    return outcome.value


def build_queue(settings: Settings, login_url: URL) -> procrastinate.App:
    """The procrastinate app on `login_url`, with the ingestion task registered."""
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=libpq_url(login_url)),
        worker_defaults={"queues": [QUEUE]},
    )
    app.task(
        name=INGEST_TASK,
        queue=QUEUE,
        pass_context=True,
        retry=RetryStrategy(
            max_attempts=settings.INGEST_MAX_ATTEMPTS - 1,  # retries after the first attempt
            exponential_wait=BACKOFF_BASE_SECONDS,
        ),
    )(run_ingest_job)
    return app


async def enqueue_ingest(session: AsyncSession, document_id: uuid.UUID) -> int:
    """Queue ingestion of a document of the session's tenant, in the session's transaction."""
    job_id = await session.scalar(select(func.enqueue_document_ingest(document_id)))
    if job_id is None:  # the function always returns the new or the waiting job's id
        raise RuntimeError("enqueue_document_ingest returned no job")
    return int(job_id)


@dataclass(frozen=True)
class JobRow:
    """One ingestion job as an admin sees it."""

    id: int
    document_id: uuid.UUID
    status: str
    attempts: int
    scheduled_at: datetime | None
    last_event: str | None
    last_event_at: datetime | None


async def list_tenant_jobs(
    session: AsyncSession, actor: Actor, status: str | None, limit: int
) -> list[JobRow]:
    """The actor's tenant's ingestion jobs, newest first (admins of the tenant only)."""
    actor.require_admin()
    rows = await session.execute(
        text("SELECT * FROM tenant_ingest_jobs(:status, :limit)"),
        {"status": status, "limit": limit},
    )
    return [JobRow(*row) for row in rows.all()]


_ALL_JOBS = text(
    "SELECT j.id, j.args ->> 'tenant_id', j.args ->> 'document_id', j.status::text, j.attempts,"
    " (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id)"
    " FROM procrastinate_jobs j WHERE j.task_name = :task"
    " AND (CAST(:status AS text) IS NULL OR j.status::text = :status)"
    " ORDER BY j.id DESC LIMIT :limit"
)


async def list_all_jobs(session: AsyncSession, status: str | None, limit: int) -> list[Any]:
    """Every tenant's ingestion jobs (the operator's CLI; `session` logs in as the owner)."""
    rows = await session.execute(_ALL_JOBS, {"task": INGEST_TASK, "status": status, "limit": limit})
    return list(rows.all())
