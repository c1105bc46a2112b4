"""`vector-indexes`: build and drop the per-tenant HNSW indexes (app/services/vector_indexes.py).

Run it from a scheduler or after a bulk import, never from a request. It connects as
DATABASE_URL's login (the table owner: only an owner may create an index), counts tenants as
the provisioning role, and builds one index at a time with CREATE INDEX CONCURRENTLY, so
searches and writes go on meanwhile. Exit status: 0 done, 1 the database refused or is
unavailable, 2 bad input or configuration.
"""

from __future__ import annotations

import asyncio

import typer
from sqlalchemy.exc import DBAPIError

from app.cli.admin import EXIT_BAD_INPUT, EXIT_REFUSED, fail
from app.core.config import Settings, SettingsError, settings_or_exit
from app.core.logging import configure_logging
from app.database.engine import build_engine, build_runtime_engine, resolve_targets
from app.database.session import make_sessionmaker
from app.services import vector_indexes as vector_indexes_service

# Building a graph in memory is several times faster than spilling it; 512 MB holds a
# ~60k-document tenant's graph (1024 dims).
DEFAULT_MAINTENANCE_WORK_MEM = "512MB"


def _describe(result: vector_indexes_service.IndexResult) -> str:
    plan = result.plan
    line = f"{plan.action.value:16} tenant {plan.tenant_id}  {plan.searchable_rows:>9} rows"
    if plan.action is not vector_indexes_service.Action.DROP:
        line += f"  {result.index_bytes / 2**20:8.1f} MiB"
    if result.seconds:
        line += f"  {result.seconds:7.1f} s"
    if result.probe_recall is not None:
        line += f"  probe recall@10 {result.probe_recall:.2f}"
    return line


async def _maintain(
    settings: Settings, min_rows: int, dry_run: bool, maintenance_work_mem: str
) -> list[vector_indexes_service.IndexResult]:
    targets = resolve_targets(settings)
    engine = build_engine(
        targets.login_url,
        settings,
        application_name="tenant-docs-vector-indexes",
        pool_size=2,
        max_overflow=0,
        # An index build takes minutes: not bounded by the API's statement timeout.
        server_settings={"statement_timeout": "0", "maintenance_work_mem": maintenance_work_mem},
    )
    # Each new index is probed the way requests search: as app_runtime, in a tenant transaction.
    runtime = build_runtime_engine(
        targets,
        settings,
        pool_size=1,
        max_overflow=0,
        server_settings={"statement_timeout": "0"},  # the probe's exact scans of a big tenant
    )
    try:
        return await vector_indexes_service.maintain_indexes(
            engine,
            min_rows,
            dry_run=dry_run,
            on_done=lambda result: typer.echo(_describe(result)),
            probe_sessions=make_sessionmaker(runtime),
        )
    finally:
        await runtime.dispose()
        await engine.dispose()


def vector_indexes(
    min_rows: int | None = typer.Option(
        None,
        "--min-rows",
        min=1,
        help="Index tenants above this many rows (VECTOR_INDEX_MIN_ROWS).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, change nothing."),
    maintenance_work_mem: str = typer.Option(
        DEFAULT_MAINTENANCE_WORK_MEM, help="maintenance_work_mem for each build (e.g. 1GB)."
    ),
) -> None:
    """Build, rebuild (INVALID) and drop per-tenant HNSW indexes; print one line per tenant."""
    settings = settings_or_exit()
    configure_logging(
        "WARNING" if settings.LOG_LEVEL == "INFO" else settings.LOG_LEVEL,
        json=settings.is_production,
    )
    threshold = settings.VECTOR_INDEX_MIN_ROWS if min_rows is None else min_rows
    if not maintenance_work_mem.isalnum():
        fail("--maintenance-work-mem must look like 512MB or 2GB", EXIT_BAD_INPUT)
    try:
        results = asyncio.run(_maintain(settings, threshold, dry_run, maintenance_work_mem))
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None) or "no connection"
        fail(f"the database refused or is unavailable ({sqlstate})", EXIT_REFUSED)
    if dry_run:
        for result in results:
            typer.echo(_describe(result))
    typer.echo(
        f"{len(results)} tenants over {threshold // 2}-{threshold} rows or with an index"
        + (" (dry run: nothing changed)" if dry_run else "")
    )
