"""Admin CLI: provision tenants (with their own keys) and users, mint dev tokens, purge expired
idempotency records.

Runs as the provisioning role (`app_admin`, switched to from DATABASE_URL's login, or the
embedded server's), writes one audit row per change (no user id: an operator acted), prints a
table or `--json`, and on bad input prints one `error: …` line and exits non-zero: 2 for
malformed input (bad UUID, invalid email), 1 when the database says no (unknown tenant,
duplicate email, a key the key manager refuses), 3 when the database, the key manager or the
object store cannot be reached (the line names which and why).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cli.database_errors import exit_if_unavailable
from app.content.backends import ContentBackends
from app.content.key_manager import KeyManagerError, KeyManagerUnavailableError
from app.content.object_store import ObjectStoreError, StorageUnavailableError
from app.core.config import Settings, SettingsError, describe_validation_error, settings_or_exit
from app.core.errors import AppError, ConflictError, NotFoundError
from app.core.logging import configure_logging
from app.database.engine import build_engine, resolve_targets
from app.database.session import admin_transaction, make_sessionmaker
from app.database.unavailable import EXIT_DATABASE_UNAVAILABLE
from app.models import Tenant, User
from app.models.user import normalise_email
from app.schemas.tenant import RotationRecord, TenantCreate, TenantRecord
from app.schemas.user import UserCreate, UserRecord
from app.services import content_sweep as content_sweep_service
from app.services import idempotency as idempotency_service
from app.services import key_rotation as key_rotation_service
from app.services import tenants as tenants_service
from app.services import users as users_service
from app.services.actor import Actor

T = TypeVar("T")

EXIT_BAD_INPUT = 2
EXIT_REFUSED = 1

TENANT_COLUMNS = ["id", "name", "status", "kms_key_arn", "created_at", "deleted_at"]
USER_COLUMNS = ["id", "tenant_id", "email", "role", "full_name", "external_idp_id", "deleted_at"]

# The CLI's operator: no user, every tenant (it runs as app_admin).
OPERATOR = Actor.operator()

JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")


def fail(message: str, code: int) -> NoReturn:
    """Print one `error:` line on stderr and exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def parse_uuid(value: str, what: str) -> uuid.UUID:
    """`value` as a UUID, or exit 2 naming the argument."""
    try:
        return uuid.UUID(value)
    except ValueError:
        fail(f"{what} must be a UUID, got {value!r}", EXIT_BAD_INPUT)


def _validated(model: type[BaseModel], **values: Any) -> Any:
    try:
        return model(**values)
    except ValidationError as exc:
        fail(f"invalid input: {describe_validation_error(exc)}", EXIT_BAD_INPUT)


@asynccontextmanager
async def _admin_sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    targets = resolve_targets(settings)
    engine = build_engine(
        targets.login_url,
        settings,
        application_name="tenant-docs-admin",
        pool_size=1,
        max_overflow=0,
    )
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


def run_admin(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one admin transaction; turn refusals into one line and an exit code."""
    return run_admin_with_content(lambda session, _content: work(session))


def run_admin_with_content(work: Callable[[AsyncSession, ContentBackends], Awaitable[T]]) -> T:
    """`run_admin` for work that also needs the key manager or the object store (opened on
    first use, closed at the end); either being unavailable exits 3 like the database."""

    async def in_one_transaction(
        sessions: async_sessionmaker[AsyncSession], content: ContentBackends
    ) -> T:
        async with admin_transaction(sessions) as session:
            return await work(session, content)

    return run_admin_transactions(in_one_transaction)


def run_admin_transactions(
    work: Callable[[async_sessionmaker[AsyncSession], ContentBackends], Awaitable[T]],
) -> T:
    """Run `work`, which opens its own admin transactions (batches), with the content backends;
    refusals and unavailable dependencies end as one line and an exit code."""
    settings = settings_or_exit()
    configure_logging(
        "WARNING" if settings.LOG_LEVEL == "INFO" else settings.LOG_LEVEL,
        json=settings.is_production,
    )

    async def main() -> T:
        content = ContentBackends(settings)
        try:
            async with _admin_sessions(settings) as sessions:
                return await work(sessions, content)
        finally:
            await content.close()

    try:
        return asyncio.run(main())
    except (KeyManagerUnavailableError, StorageUnavailableError) as exc:
        fail(str(exc), EXIT_DATABASE_UNAVAILABLE)
    except (KeyManagerError, ObjectStoreError) as exc:
        fail(str(exc), EXIT_REFUSED)
    except AppError as exc:
        fail(exc.message, EXIT_REFUSED)
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except DBAPIError as exc:
        exit_if_unavailable(settings, exc)
        sqlstate = getattr(exc.orig, "sqlstate", None) or "no connection"
        fail(f"the database refused or is unavailable ({sqlstate})", EXIT_REFUSED)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def emit(records: Sequence[BaseModel], columns: list[str], as_json: bool, *, many: bool) -> None:
    """Print records as an aligned table, or as JSON (an object, or a list when `many`)."""
    if as_json:
        payload = [record.model_dump(mode="json") for record in records]
        typer.echo(json.dumps(payload if many else payload[0], indent=2))
        return
    rows = [[_cell(getattr(record, column)) for column in columns] for record in records]
    widths = [
        max([len(column), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)
    ]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    typer.echo("\n".join(line.rstrip() for line in lines))


def _emit_tenant(tenant: Tenant, as_json: bool) -> None:
    emit([TenantRecord.model_validate(tenant)], TENANT_COLUMNS, as_json, many=False)


def _emit_user(user: User, as_json: bool) -> None:
    emit([UserRecord.model_validate(user)], USER_COLUMNS, as_json, many=False)


# Tenants ----------------------------------------------------------------------------------


KmsKeyOption = typer.Option(
    None,
    "--kms-key-ref",
    help="Bring an existing key (AWS KMS key ARN, or OpenBao transit key name) instead of"
    " creating one; it is checked by wrapping and unwrapping a probe data key.",
)


def create_tenant(
    name: str = typer.Argument(..., help="Display name of the organisation."),
    kms_key_ref: str | None = KmsKeyOption,
    without_key: bool = typer.Option(
        False,
        "--without-key",
        help="No KMS configured yet: create the tenant without a key; its document content"
        " uploads answer 409 until `provision-tenant-key` gives it one.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Create an active tenant and its own encryption key (recorded as kms_key_arn)."""
    if without_key and kms_key_ref is not None:
        fail("--without-key and --kms-key-ref exclude each other", EXIT_BAD_INPUT)
    data = _validated(TenantCreate, name=name, kms_key_ref=kms_key_ref)
    tenant = run_admin_with_content(
        lambda s, content: _create_tenant(s, content, data, with_key=not without_key),
    )
    _emit_tenant(tenant, as_json)


async def _create_tenant(
    session: AsyncSession, content: ContentBackends, data: TenantCreate, *, with_key: bool
) -> Tenant:
    keys = await content.key_manager() if with_key else None
    return await tenants_service.create_tenant(session, OPERATOR, data, keys)


def provision_tenant_key(
    tenant: str = typer.Option(..., "--tenant", help="Tenant id."),
    kms_key_ref: str | None = KmsKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Give a tenant created without one its own key (a tenant with a key keeps it)."""
    tid = parse_uuid(tenant, "--tenant")
    if kms_key_ref is not None and not 1 <= len(kms_key_ref) <= 2048:
        fail("--kms-key-ref must be 1 to 2048 characters", EXIT_BAD_INPUT)

    async def provision(session: AsyncSession, content: ContentBackends) -> Tenant:
        keys = await content.key_manager()
        return await tenants_service.provision_tenant_key(session, OPERATOR, tid, keys, kms_key_ref)

    _emit_tenant(run_admin_with_content(provision), as_json)


def list_tenants(
    include_deleted: bool = typer.Option(False, help="Include soft-deleted tenants."),
    as_json: bool = JsonOption,
) -> None:
    """List tenants, oldest first."""
    tenants = run_admin(
        lambda s: tenants_service.list_tenants(s, OPERATOR, include_deleted=include_deleted)
    )
    records = [TenantRecord.model_validate(t) for t in tenants]
    emit(records, TENANT_COLUMNS, as_json, many=True)


def _by_id(
    what: str,
    change: Callable[[AsyncSession, uuid.UUID], Awaitable[Tenant | User]],
    doc: str,
) -> Callable[[str, bool], None]:
    """A command that changes one tenant or user, named by id, and prints it."""
    argument = f"{what.upper()}_ID"

    def command(
        row_id: str = typer.Argument(..., metavar=argument, help=f"{what.capitalize()} id."),
        as_json: bool = JsonOption,
    ) -> None:
        parsed = parse_uuid(row_id, argument)
        row = run_admin(lambda s: change(s, parsed))
        if isinstance(row, Tenant):
            _emit_tenant(row, as_json)
        else:
            _emit_user(row, as_json)

    command.__doc__ = doc
    return command


suspend_tenant = _by_id(
    "tenant",
    lambda s, tid: tenants_service.set_tenant_status(s, OPERATOR, tid, "suspended"),
    "Suspend a tenant: its users get 403 until it is activated again.",
)
activate_tenant = _by_id(
    "tenant",
    lambda s, tid: tenants_service.set_tenant_status(s, OPERATOR, tid, "active"),
    "Re-activate a suspended tenant.",
)
delete_tenant = _by_id(
    "tenant",
    lambda s, tid: tenants_service.delete_tenant(s, OPERATOR, tid),
    "Soft-delete a tenant (data kept; its users get 403). Undo with restore-tenant.",
)
restore_tenant = _by_id(
    "tenant",
    lambda s, tid: tenants_service.restore_tenant(s, OPERATOR, tid),
    "Restore a soft-deleted tenant.",
)


# Users ------------------------------------------------------------------------------------


def create_user(
    tenant: str = typer.Option(..., "--tenant", help="Tenant id."),
    email: str = typer.Option(..., help="Email (unique among the tenant's active users)."),
    external_idp_id: str = typer.Option(..., help="The user's `sub` at the identity provider."),
    role: str = typer.Option("member", help="admin or member."),
    full_name: str | None = typer.Option(None, help="Display name."),
    as_json: bool = JsonOption,
) -> None:
    """Add a user to a tenant."""
    tid = parse_uuid(tenant, "--tenant")
    data = _validated(
        UserCreate, email=email, external_idp_id=external_idp_id, role=role, full_name=full_name
    )
    user = run_admin(lambda s: users_service.create_user(s, OPERATOR.in_tenant(tid), data))
    _emit_user(user, as_json)


def list_users(
    tenant: str = typer.Option(..., "--tenant", help="Tenant id."),
    include_deleted: bool = typer.Option(False, help="Include soft-deleted users."),
    as_json: bool = JsonOption,
) -> None:
    """List a tenant's users, oldest first."""
    tid = parse_uuid(tenant, "--tenant")
    users = run_admin(
        lambda s: users_service.list_users(
            s, OPERATOR.in_tenant(tid), include_deleted=include_deleted
        )
    )
    emit([UserRecord.model_validate(u) for u in users], USER_COLUMNS, as_json, many=True)


delete_user = _by_id(
    "user",
    lambda s, uid: users_service.delete_user(s, OPERATOR, uid),
    "Soft-delete a user (they get 403 from then on). Undo with restore-user.",
)
restore_user = _by_id(
    "user",
    lambda s, uid: users_service.restore_user(s, OPERATOR, uid),
    "Restore a soft-deleted user (refused if an active user now has their email).",
)


# Dev tokens -------------------------------------------------------------------------------


async def _token_subject(session: AsyncSession, tenant_id: uuid.UUID, user: str) -> str:
    """The IdP subject of an active user (by id or email) of an active tenant."""
    statement = select(User, Tenant).join(Tenant, Tenant.id == User.tenant_id)
    statement = statement.where(User.tenant_id == tenant_id, User.deleted_at.is_(None))
    try:
        statement = statement.where(User.id == uuid.UUID(user))
    except ValueError:
        statement = statement.where(User.email == normalise_email(user))
    row = (await session.execute(statement)).first()
    if row is None:
        raise NotFoundError(f"no active user {user} in tenant {tenant_id}")
    found_user, found_tenant = row
    if found_tenant.deleted_at is not None or found_tenant.status != "active":
        raise ConflictError(f"tenant {tenant_id} is not active; its users would get 403")
    if found_user.external_idp_id is None:
        raise ConflictError(f"user {user} has no external IdP id to put in the token's sub")
    return str(found_user.external_idp_id)


def dev_token(
    tenant: str = typer.Option(..., "--tenant", help="Tenant id."),
    user: str = typer.Option(..., "--user", help="User id or email."),
    expires_in: int = typer.Option(3600, min=60, max=7 * 24 * 3600, help="Lifetime in seconds."),
    as_json: bool = JsonOption,
) -> None:
    """Mint a dev token for a user (dev mode only: no OIDC_ISSUER_URL, not production)."""
    from app.auth.dev_issuer import dev_issuer_for  # crypto imports only for this command

    settings = settings_or_exit()
    try:
        issuer = dev_issuer_for(settings)
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    tid = parse_uuid(tenant, "--tenant")
    subject = run_admin(lambda s: _token_subject(s, tid, user))
    token = issuer.mint(
        subject=subject,
        tenant_id=tid,
        tenant_claim=settings.OIDC_TENANT_CLAIM,
        lifetime_seconds=expires_in,
    )
    if as_json:
        body = {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
        typer.echo(json.dumps(body, indent=2))
    else:
        typer.echo(token)


def rotate_tenant_key(
    tenant: str = typer.Option(..., "--tenant", help="Tenant id."),
    as_json: bool = JsonOption,
) -> None:
    """New key material for a tenant: every data key rewrapped (content untouched), then the
    old key versions retired (docs/ENCRYPTION.md)."""
    tid = parse_uuid(tenant, "--tenant")

    async def rotate(
        sessions: async_sessionmaker[AsyncSession], content: ContentBackends
    ) -> key_rotation_service.RotationReport:
        keys = await content.key_manager()
        return await key_rotation_service.rotate_tenant_key(sessions, OPERATOR, tid, keys)

    report = run_admin_transactions(rotate)
    emit(
        [RotationRecord.model_validate(report)],
        ["tenant_id", "kms_key_arn", "key_version", "rewrapped"],
        as_json,
        many=False,
    )


def sweep_orphan_content(
    older_than_minutes: int = typer.Option(
        60,
        "--older-than-minutes",
        min=0,
        help="Grace period: only objects and unfinished uploads older than this (longer than"
        " any upload in flight).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Delete stored content no document points at (an upload killed before its row was
    written) and abort unfinished multipart uploads (killed during the upload)."""

    async def sweep(
        sessions: async_sessionmaker[AsyncSession], content: ContentBackends
    ) -> content_sweep_service.SweepReport:
        store = await content.object_store()
        return await content_sweep_service.sweep_orphans(
            sessions, store, grace=timedelta(minutes=older_than_minutes)
        )

    report = run_admin_transactions(sweep)
    if as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
    else:
        typer.echo(
            f"examined {report.examined} objects, deleted {len(report.deleted)} orphans,"
            f" aborted {report.aborted_uploads} unfinished uploads"
        )


def purge_idempotency_keys(as_json: bool = JsonOption) -> None:
    """Delete every tenant's expired Idempotency-Key records (run it on a schedule)."""
    deleted = run_admin(idempotency_service.purge_expired)
    if as_json:
        typer.echo(json.dumps({"deleted": deleted}))
    else:
        typer.echo(f"deleted {deleted} expired idempotency records")


def register(cli: typer.Typer) -> None:
    """Add the admin commands to the CLI."""
    commands: dict[str, Callable[..., None]] = {
        "create-tenant": create_tenant,
        "provision-tenant-key": provision_tenant_key,
        "rotate-tenant-key": rotate_tenant_key,
        "sweep-orphan-content": sweep_orphan_content,
        "list-tenants": list_tenants,
        "suspend-tenant": suspend_tenant,
        "activate-tenant": activate_tenant,
        "delete-tenant": delete_tenant,
        "restore-tenant": restore_tenant,
        "create-user": create_user,
        "list-users": list_users,
        "delete-user": delete_user,
        "restore-user": restore_user,
        "dev-token": dev_token,
        "purge-idempotency-keys": purge_idempotency_keys,
    }
    for name, command in commands.items():
        cli.command(name)(command)
