"""The command-line interface: serve the API, migrate, and (admin) provisioning commands."""

from __future__ import annotations

import typer

from app.cli import admin, lifecycle, serve
from app.cli.audit import audit_anchor, verify_audit
from app.cli.vector_indexes import vector_indexes
from app.cli.worker import list_jobs, worker

cli = typer.Typer(
    help="Tenant Docs backend: run the API, migrate the database, provision tenants and users.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli.command("run")(serve.run)
cli.command("migrate")(serve.migrate)
admin.register(cli)
lifecycle.register(cli)
cli.command("verify-audit")(verify_audit)
cli.command("audit-anchor")(audit_anchor)
cli.command("vector-indexes")(vector_indexes)
cli.command("worker")(worker)
cli.command("jobs")(list_jobs)


def main() -> None:
    """Entry point of the `tenantdocs` console script and `python -m app`."""
    cli()
