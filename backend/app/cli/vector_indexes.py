"""`vector-indexes`: build and drop the per-tenant HNSW indexes (app/services/vector_indexes.py).

It runs by itself, never from a request (docs/VECTOR_SEARCH.md, "Keeping the indexes in line"):
`make run` runs it every VECTOR_INDEX_INTERVAL_SECONDS in the background, the compose stack has a
`vector-indexes` service that runs `--every`, and Railway a cron service. Run it by hand after a
bulk import. It connects as DATABASE_URL's login (the table owner: only an owner may create an
index), counts tenants as the provisioning role, and builds one index at a time with CREATE INDEX
CONCURRENTLY, so searches and writes go on meanwhile. Exit status: 0 done, 1 the database
refused or is unavailable, 2 bad input or configuration (with --every, a failed run is reported
and the next one tried; only bad configuration exits).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass

import typer
from sqlalchemy.exc import DBAPIError

from app.cli.admin import EXIT_BAD_INPUT, EXIT_REFUSED, fail, parse_uuid
from app.core.config import Settings, SettingsError, settings_or_exit
from app.core.logging import configure_logging
from app.database.engine import DatabaseTargets, resolve_targets
from app.services import vector_indexes as vector_indexes_service

logger = logging.getLogger(__name__)


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


def maintain_once(
    settings: Settings,
    min_rows: int,
    *,
    dry_run: bool = False,
    maintenance_work_mem: str = vector_indexes_service.DEFAULT_MAINTENANCE_WORK_MEM,
    tenants: list[uuid.UUID] | None = None,
) -> list[vector_indexes_service.IndexResult]:
    """One run of the maintenance, printing a line per tenant as it goes."""
    return asyncio.run(
        vector_indexes_service.run_maintenance(
            resolve_targets(settings),
            settings,
            min_rows,
            dry_run=dry_run,
            maintenance_work_mem=maintenance_work_mem,
            tenants=tenants,
            on_done=None if dry_run else lambda result: typer.echo(_describe(result)),
        )
    )


@dataclass(frozen=True)
class BackgroundMaintenance:
    """The thread `make run` keeps the indexes in line with, and how to stop it."""

    thread: threading.Thread
    stopping: threading.Event

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end after its current run; wait up to `timeout` s (None: until then)."""
        self.stopping.set()
        self.thread.join(timeout)


def start_background_maintenance(
    settings: Settings, targets: DatabaseTargets
) -> BackgroundMaintenance | None:
    """For `make run`: keep the per-tenant indexes in line every VECTOR_INDEX_INTERVAL_SECONDS.

    A daemon thread runs the same maintenance as the command (first right away, then on the
    interval) and logs what it changed. A build cut short by the process exiting leaves an
    INVALID index, which searches ignore and the next run rebuilds. None when the interval is 0.
    """
    interval = settings.VECTOR_INDEX_INTERVAL_SECONDS
    if not interval:
        return None
    stopping = threading.Event()

    def log(result: vector_indexes_service.IndexResult) -> None:
        if result.plan.action is not vector_indexes_service.Action.KEEP:
            logger.info("vector-indexes: %s", _describe(result))

    def loop() -> None:
        while not stopping.is_set():
            try:
                asyncio.run(
                    vector_indexes_service.run_maintenance(
                        targets, settings, settings.VECTOR_INDEX_MIN_ROWS, on_done=log
                    )
                )
            except Exception:  # a failed run is logged; the next one tries again
                logger.exception("vector-indexes: the background run failed")
            stopping.wait(interval)

    thread = threading.Thread(target=loop, name="vector-indexes", daemon=True)
    thread.start()
    return BackgroundMaintenance(thread, stopping)


def vector_indexes(
    min_rows: int | None = typer.Option(
        None,
        "--min-rows",
        min=1,
        help="Index tenants above this many rows (VECTOR_INDEX_MIN_ROWS).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, change nothing."),
    maintenance_work_mem: str = typer.Option(
        vector_indexes_service.DEFAULT_MAINTENANCE_WORK_MEM,
        help="maintenance_work_mem for each build (e.g. 1GB).",
    ),
    tenant: list[str] | None = typer.Option(
        None, "--tenant", help="Only this tenant (repeatable), e.g. right after its bulk import."
    ),
    every: int = typer.Option(
        0,
        "--every",
        min=0,
        help="Keep running: start a run every this many seconds (0: run once and exit).",
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
    tenants = [parse_uuid(value, "--tenant") for value in tenant] if tenant else None
    while True:
        started = time.monotonic()
        try:
            results = maintain_once(
                settings,
                threshold,
                dry_run=dry_run,
                maintenance_work_mem=maintenance_work_mem,
                tenants=tenants,
            )
        except SettingsError as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None) or "no connection"
            message = f"the database refused or is unavailable ({sqlstate})"
            if not every:
                fail(message, EXIT_REFUSED)
            typer.echo(f"error: {message}; next run in {every} s", err=True)
        else:
            if dry_run:
                for result in results:
                    typer.echo(_describe(result))
            typer.echo(
                f"{len(results)} tenants over {threshold // 2}-{threshold} rows or with an index"
                + (" (dry run: nothing changed)" if dry_run else "")
            )
        if not every:
            return
        time.sleep(max(0.0, every - (time.monotonic() - started)))
