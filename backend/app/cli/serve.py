"""`run` (migrate, then serve) and `migrate`: what `make run` and `make migrate` call."""

from __future__ import annotations

import typer
import uvicorn

from app.core.config import settings_or_exit
from app.core.logging import configure_logging
from app.database import migrations
from app.database.engine import resolve_targets


def migrate(revision: str = typer.Argument("head", help="Revision to upgrade to.")) -> None:
    """Upgrade the database (embedded when DATABASE_URL is unset) to `revision`."""
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
    settings = settings_or_exit()
    configure_logging(settings.LOG_LEVEL)
    targets = resolve_targets(settings)
    migrations.upgrade(targets.login_url, targets.runtime_password)
    typer.echo(
        f"\nAPI: http://{host}:{port}/api/v1/health/ready   docs: http://{host}:{port}/docs\n"
    )
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, log_config=None)
