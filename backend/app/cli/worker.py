"""`worker` runs ingestion jobs; `jobs` lists them (every tenant's: the operator's view).

`python -m app worker` takes jobs from the queue (procrastinate, in PostgreSQL) and runs each
as its tenant (app/services/ingest.py). `make run` starts one beside the server. Stop it with
SIGINT or SIGTERM: it finishes the jobs in hand first. `python -m app jobs --status failed`
lists the jobs that used up their attempts (their documents are `failed`, with the reason).
Exit status: 0 done, 1 the database refused or is unavailable, 2 bad configuration.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
from typing import Any

import typer

from app.cli.admin import EXIT_BAD_INPUT, fail
from app.cli.database_errors import database_unavailable_exits
from app.content.backends import ContentBackends
from app.core.config import Settings, SettingsError, settings_or_exit
from app.core.logging import configure_logging
from app.database.engine import build_engine, build_runtime_engine, resolve_targets
from app.database.session import make_sessionmaker
from app.services import jobs

JOB_STATUSES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")


async def _work(settings: Settings, concurrency: int, once: bool) -> None:
    # Imported here: extraction and embedding (numpy, pypdf) cost every other command ~0.2 s.
    from app.ingest.embeddings import open_embedder
    from app.services import ingest

    targets = resolve_targets(settings)
    runtime = build_runtime_engine(
        targets, settings, application_name="tenant-docs-worker", pool_size=concurrency + 1
    )
    backends = ContentBackends(settings)
    embedder = await open_embedder(settings)
    queue = jobs.build_queue(settings, targets.login_url)
    context = ingest.IngestContext(make_sessionmaker(runtime), backends, embedder, settings)
    try:
        async with queue.open_async():
            await queue.run_worker_async(
                concurrency=concurrency,
                wait=not once,
                additional_context={jobs.CONTEXT_KEY: context},
            )
    finally:
        await embedder.close()
        await backends.close()
        await runtime.dispose()


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when `parent_pid` dies, even by SIGKILL (Linux), so no worker outlives
    the `run` that started it; exit at once if it is already gone."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        raise typer.Exit(0)


def worker(
    concurrency: int | None = typer.Option(
        None, min=1, max=64, help="Jobs at once (INGEST_WORKER_CONCURRENCY)."
    ),
    once: bool = typer.Option(False, help="Stop when the queue is empty instead of waiting."),
    parent_pid: int | None = typer.Option(
        None, help="Stop when this process (the `run` that started the worker) dies."
    ),
) -> None:
    """Run ingestion jobs: extract, chunk and embed stored content, as each job's tenant."""
    if parent_pid is not None:
        _stop_with_parent(parent_pid)
    settings = settings_or_exit()
    configure_logging(settings.LOG_LEVEL, json=settings.is_production)
    try:
        with database_unavailable_exits(settings):
            asyncio.run(_work(settings, concurrency or settings.INGEST_WORKER_CONCURRENCY, once))
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        pass


async def _list(settings: Settings, status: str | None, limit: int) -> list[Any]:
    targets = resolve_targets(settings)
    engine = build_engine(targets.login_url, settings, pool_size=1, max_overflow=0)
    try:
        async with make_sessionmaker(engine)() as session:
            return await jobs.list_all_jobs(session, status, limit)
    finally:
        await engine.dispose()


def list_jobs(
    status: str | None = typer.Option(None, help=f"One of {', '.join(JOB_STATUSES)}."),
    limit: int = typer.Option(50, min=1, max=10_000, help="At most this many, newest first."),
) -> None:
    """List ingestion jobs of every tenant (id, tenant, document, status, attempts, last event)."""
    if status is not None and status not in JOB_STATUSES:
        fail(f"--status: expected one of {', '.join(JOB_STATUSES)}", EXIT_BAD_INPUT)
    settings = settings_or_exit()
    with database_unavailable_exits(settings):
        rows = asyncio.run(_list(settings, status, limit))
    for job_id, tenant, document, job_status, attempts, last in rows:
        typer.echo(
            f"{job_id:>8}  {job_status:10} attempts {attempts}  tenant {tenant}"
            f"  document {document}  {last or ''}"
        )
    typer.echo(f"{len(rows)} job(s)")
