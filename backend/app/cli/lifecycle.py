"""`export-tenant`, `offboard-tenant` and `purge-deleted`: a tenant's whole life, as an operator.

Each runs as the provisioning role (DATABASE_URL's login switched to `app_admin`), writes its
progress on stderr, its result on stdout, and exits 0 done, 1 refused (unknown tenant, wrong
state, grace period not over), 2 bad input or configuration, 3 a dependency (database, object
storage, key manager) unavailable: the line names it and the step; nothing after that step was
done, and running the command again finishes the work (docs/TENANT_LIFECYCLE.md).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cli.admin import EXIT_BAD_INPUT, EXIT_REFUSED, OPERATOR, fail, parse_uuid
from app.cli.database_errors import exit_if_unavailable
from app.content.backends import ContentBackends
from app.core.config import Settings, SettingsError, settings_or_exit
from app.core.errors import AppError
from app.core.logging import configure_logging
from app.database.engine import build_engine, resolve_targets
from app.database.session import admin_transaction, make_sessionmaker
from app.database.unavailable import EXIT_DATABASE_UNAVAILABLE
from app.services import audit_anchor as audit_anchor_service
from app.services import tenant_export as export_service
from app.services import tenant_import as import_service
from app.services import tenant_lifecycle as lifecycle_service

T = TypeVar("T")


@dataclass
class Lifecycle:
    """What a lifecycle command works with: admin sessions, a snapshot variant, content."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    snapshot_sessions: async_sessionmaker[AsyncSession]
    content: ContentBackends


def progress(message: str) -> None:
    """One progress line on stderr."""
    typer.echo(f"  {message}", err=True)


@asynccontextmanager
async def _opened(settings: Settings) -> AsyncIterator[Lifecycle]:
    targets = resolve_targets(settings)
    engine = build_engine(
        targets.login_url,
        settings,
        application_name="tenant-docs-lifecycle",
        pool_size=2,
        max_overflow=0,
        # An export streams for as long as the tenant is large: not bounded like a request.
        server_settings={"statement_timeout": "0", "idle_in_transaction_session_timeout": "0"},
    )
    content = ContentBackends(settings)
    try:
        yield Lifecycle(
            settings=settings,
            sessions=make_sessionmaker(engine),
            snapshot_sessions=make_sessionmaker(
                engine.execution_options(isolation_level="REPEATABLE READ")
            ),
            content=content,
        )
    finally:
        await content.close()
        await engine.dispose()


def run_lifecycle(work: Callable[[Lifecycle], Awaitable[T]]) -> T:
    """Run `work`; turn refusals and unavailable dependencies into one line and an exit code."""
    settings = settings_or_exit()
    configure_logging(
        "WARNING" if settings.LOG_LEVEL == "INFO" else settings.LOG_LEVEL,
        json=settings.is_production,
    )

    async def main() -> T:
        async with _opened(settings) as lifecycle:
            return await work(lifecycle)

    try:
        return asyncio.run(main())
    except lifecycle_service.DependencyUnavailableError as exc:
        typer.echo(f"error: {exc.message}; nothing after that step was done, run again", err=True)
        raise typer.Exit(EXIT_DATABASE_UNAVAILABLE) from None
    except AppError as exc:
        fail(exc.message, EXIT_REFUSED)
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except DBAPIError as exc:
        exit_if_unavailable(settings, exc)
        sqlstate = getattr(exc.orig, "sqlstate", None) or "no connection"
        fail(f"the database refused or is unavailable ({sqlstate})", EXIT_REFUSED)


# Export ----------------------------------------------------------------------------------


async def write_export(
    lifecycle: Lifecycle,
    tenant_id: uuid.UUID,
    output: Path,
    anchor_key: Ed25519PrivateKey | None,
) -> export_service.ExportSummary:
    """Audit the export, then write the archive to `output` (via a temporary name)."""
    async with admin_transaction(lifecycle.sessions) as session:
        await export_service.audit_export(
            session, OPERATOR, tenant_id, signed=anchor_key is not None
        )
    summary = export_service.ExportSummary(tenant_id)
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("wb") as archive:
            async with admin_transaction(lifecycle.snapshot_sessions) as session:
                async for chunk in export_service.stream_archive(
                    session,
                    tenant_id,
                    anchor_key=anchor_key,
                    read_content=export_service.content_reader(
                        await lifecycle.content.object_store(),
                        await lifecycle.content.key_manager(),
                    ),
                    progress=progress,
                    summary=summary,
                ):
                    archive.write(chunk)
            archive.flush()
            os.fsync(archive.fileno())
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return summary


def _anchor_key(settings: Settings, unsigned: bool) -> Ed25519PrivateKey | None:
    if unsigned:
        return None
    try:
        return audit_anchor_service.signing_key(settings)
    except audit_anchor_service.AnchorError as exc:
        fail(f"{exc} (or pass --unsigned)", EXIT_BAD_INPUT)


def export_tenant(
    tenant: str = typer.Argument(..., metavar="TENANT_ID", help="Tenant id."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the .tar archive."),
    unsigned: bool = typer.Option(
        False, "--unsigned", help="No signing key here: write the audit head unsigned."
    ),
) -> None:
    """Export everything a tenant owns to a tar archive (docs/TENANT_LIFECYCLE.md)."""
    settings = settings_or_exit()
    tenant_id = parse_uuid(tenant, "TENANT_ID")
    anchor_key = _anchor_key(settings, unsigned)
    summary = run_lifecycle(lambda lc: write_export(lc, tenant_id, output, anchor_key))
    _print_export(output, summary)


def _print_export(output: Path, summary: export_service.ExportSummary) -> None:
    rows = ", ".join(f"{count} {table}" for table, count in summary.rows.items())
    typer.echo(
        f"exported tenant {summary.tenant_id} to {output}: {rows}; "
        f"{summary.audit_rows} audit rows (head {summary.audit_head_seq}, "
        f"{'signed' if summary.anchor_signed else 'UNSIGNED'}); "
        f"{summary.documents_with_content} documents with content; "
        f"{summary.archive_bytes} bytes"
    )


# Offboarding -----------------------------------------------------------------------------


async def _schedule(lifecycle: Lifecycle, tenant_id: uuid.UUID, grace: timedelta) -> Any:
    async with admin_transaction(lifecycle.sessions) as session:
        tenant = await lifecycle_service.schedule_offboarding(session, OPERATOR, tenant_id, grace)
        return tenant.offboard_after


async def _cancel(lifecycle: Lifecycle, tenant_id: uuid.UUID) -> None:
    async with admin_transaction(lifecycle.sessions) as session:
        await lifecycle_service.cancel_offboarding(session, OPERATOR, tenant_id)


async def _execute(
    lifecycle: Lifecycle,
    tenant_id: uuid.UUID,
    export_to: Path | None,
    anchor_key: Ed25519PrivateKey | None,
) -> lifecycle_service.OffboardingReport:
    if export_to is not None:
        summary = await write_export(lifecycle, tenant_id, export_to, anchor_key)
        _print_export(export_to, summary)
    return await lifecycle_service.execute_offboarding(
        lifecycle.sessions,
        lifecycle.content.object_store,
        lifecycle.content.key_manager,
        OPERATOR,
        tenant_id,
        progress=progress,
    )


def offboard_tenant(
    tenant: str = typer.Argument(..., metavar="TENANT_ID", help="Tenant id."),
    schedule: bool = typer.Option(
        False, "--schedule", help="Revoke access now and start the grace period."
    ),
    cancel: bool = typer.Option(False, "--cancel", help="Reactivate during the grace period."),
    execute: bool = typer.Option(
        False, "--execute", help="After the grace period: shred the key, erase content and rows."
    ),
    grace_days: int | None = typer.Option(
        None, "--grace-days", min=0, max=365, help="With --schedule: OFFBOARDING_GRACE_DAYS."
    ),
    export_to: Path | None = typer.Option(
        None, "--export", help="With --execute: export the tenant here first."
    ),
    unsigned: bool = typer.Option(False, "--unsigned", help="With --export: no signed anchor."),
) -> None:
    """Offboard a tenant: --schedule, then --execute after the grace period (or --cancel)."""
    settings = settings_or_exit()
    tenant_id = parse_uuid(tenant, "TENANT_ID")
    if schedule + cancel + execute != 1:
        fail("give exactly one of --schedule, --cancel, --execute", EXIT_BAD_INPUT)
    if schedule:
        grace = timedelta(
            days=settings.OFFBOARDING_GRACE_DAYS if grace_days is None else grace_days
        )
        after = run_lifecycle(lambda lc: _schedule(lc, tenant_id, grace))
        typer.echo(
            f"tenant {tenant_id}: access revoked; offboarding can be executed from "
            f"{after.isoformat(timespec='seconds')} (cancel with --cancel until then)"
        )
    elif cancel:
        run_lifecycle(lambda lc: _cancel(lc, tenant_id))
        typer.echo(f"tenant {tenant_id}: offboarding cancelled, tenant active again")
    else:
        anchor_key = _anchor_key(settings, unsigned) if export_to is not None else None
        report = run_lifecycle(lambda lc: _execute(lc, tenant_id, export_to, anchor_key))
        if report.already_offboarded:
            typer.echo(f"tenant {tenant_id}: already offboarded, nothing to do")
            return
        typer.echo(
            f"tenant {tenant_id} offboarded: key "
            f"{'destroyed' if report.key_destroyed else 'already gone or none'}, "
            f"{report.objects_deleted} objects, {report.documents_deleted} documents and "
            f"{report.users_deleted} users erased; the tenant row stays as a tombstone"
        )


# Retention -------------------------------------------------------------------------------


def purge_deleted(
    retention_days: int | None = typer.Option(
        None,
        "--retention-days",
        min=1,
        max=3650,
        help="Erase what was soft-deleted longer ago than this (SOFT_DELETE_RETENTION_DAYS).",
    ),
) -> None:
    """Erase documents and users soft-deleted longer ago than the retention period (cron-safe)."""
    settings = settings_or_exit()
    days = settings.SOFT_DELETE_RETENTION_DAYS if retention_days is None else retention_days
    report = run_lifecycle(
        lambda lc: lifecycle_service.purge_deleted(
            lc.sessions,
            lc.content.object_store,
            OPERATOR,
            timedelta(days=days),
            progress=progress,
        )
    )
    assert report.cutoff is not None
    typer.echo(
        f"purged what was deleted before {report.cutoff.isoformat(timespec='seconds')}: "
        f"{report.documents_purged} documents ({report.objects_deleted} objects), "
        f"{report.users_purged} users; {report.users_kept_with_documents} deleted users kept "
        "(they still own documents)"
    )


# Restore --------------------------------------------------------------------------------


async def _import(
    lifecycle: Lifecycle, archive: Path, verify_key: Ed25519PublicKey | None
) -> import_service.ImportSummary:
    async with admin_transaction(lifecycle.sessions) as session:
        return await import_service.import_archive(
            session,
            OPERATOR,
            archive,
            verify_key,
            await lifecycle.content.object_store(),
            await lifecycle.content.key_manager(),
        )


def import_tenant(
    archive: Path = typer.Argument(..., help="An archive written by export-tenant."),
) -> None:
    """Restore one tenant from its export into this database (ids and audit chain kept)."""
    settings = settings_or_exit()
    try:
        verify_key = audit_anchor_service.verify_key(settings)
    except audit_anchor_service.AnchorError:
        verify_key = None  # an unsigned archive still restores; a signed one is refused
    summary = run_lifecycle(lambda lc: _import(lc, archive, verify_key))
    rows = ", ".join(f"{count} {table}" for table, count in summary.rows.items())
    typer.echo(
        f"restored tenant {summary.tenant_id}: {rows}; audit chain of {summary.audit_rows} rows "
        f"rebuilt, head {summary.audit_head_hash} "
        f"({summary.documents_with_content} documents' content sealed under a new key) "
        f"({'matches the signed anchor' if summary.anchor_checked else 'archive unsigned'})"
    )


def register(cli: typer.Typer) -> None:
    """Add the lifecycle commands to the CLI."""
    cli.command("export-tenant")(export_tenant)
    cli.command("offboard-tenant")(offboard_tenant)
    cli.command("purge-deleted")(purge_deleted)
    cli.command("import-tenant")(import_tenant)
