"""`run` (migrate, then serve) and `migrate`: what `make run` and `make migrate` call."""

from __future__ import annotations

import asyncio
import shlex

import typer

from app.core.config import Settings, settings_or_exit
from app.core.logging import configure_logging
from app.database.engine import DatabaseTargets, build_engine, resolve_targets
from app.database.session import admin_transaction, make_sessionmaker
from app.models import Tenant, User
from app.services import demo as demo_service
from app.services.actor import Actor

# The curl `make run` prints stays usable for a working day; `dev-token` mints more.
DEMO_TOKEN_LIFETIME_SECONDS = 12 * 3600


def migrate(revision: str = typer.Argument("head", help="Revision to upgrade to.")) -> None:
    """Upgrade the database (embedded when DATABASE_URL is unset) to `revision`."""
    from app.database import migrations  # Alembic is heavy: imported only when used

    settings = settings_or_exit()
    configure_logging(settings.LOG_LEVEL)
    targets = resolve_targets(settings)
    migrations.upgrade(targets.login_url, targets.runtime_password, revision)
    typer.echo(f"database migrated to {revision}")


def run(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """Start the database if embedded, migrate to head, and serve the API."""
    import uvicorn

    from app.database import migrations

    settings = settings_or_exit()
    configure_logging(settings.LOG_LEVEL)
    targets = resolve_targets(settings)
    migrations.upgrade(targets.login_url, targets.runtime_password)
    typer.echo(
        f"\nAPI: http://{host}:{port}/api/v1/health/ready   docs: http://{host}:{port}/docs\n"
    )
    if settings.dev_issuer_enabled:
        typer.echo(demo_instructions(settings, targets, host, port), nl=True)
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, log_config=None)


def demo_instructions(settings: Settings, targets: DatabaseTargets, host: str, port: int) -> str:
    """Ensure the demo tenant and admin exist; a ready-to-paste curl with a fresh dev token."""
    from app.auth.dev_issuer import dev_issuer_for

    tenant, user = asyncio.run(_ensure_demo_user(settings, targets))
    issuer = dev_issuer_for(settings)
    token = issuer.mint(
        subject=str(user.external_idp_id),
        tenant_id=tenant.id,
        tenant_claim=settings.OIDC_TENANT_CLAIM,
        lifetime_seconds=DEMO_TOKEN_LIFETIME_SECONDS,
    )
    reachable_host = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104
    url = f"http://{reachable_host}:{port}/api/v1/me"
    curl = f"curl -s -H {shlex.quote('Authorization: Bearer ' + token)} {url}"
    return (
        f"Dev mode: the app issues its own tokens (set OIDC_ISSUER_URL to use your IdP).\n"
        f"Demo tenant {tenant.id} ({tenant.name}), admin {user.email}. Try:\n\n"
        f"{curl}\n\n"
        f"More tokens: python -m app dev-token --tenant {tenant.id} --user {user.email}\n"
    )


async def _ensure_demo_user(settings: Settings, targets: DatabaseTargets) -> tuple[Tenant, User]:
    engine = build_engine(
        targets.login_url, settings, application_name="tenant-docs-admin", pool_size=1
    )
    try:
        async with admin_transaction(make_sessionmaker(engine)) as session:
            return await demo_service.ensure_demo_user(session, Actor.operator(source="make-run"))
    finally:
        await engine.dispose()
