"""Alembic environment: migrations run as DATABASE_URL's login (never as the runtime role)."""

from __future__ import annotations

import logging
from logging.config import fileConfig

from sqlalchemy import Connection, create_engine, text

from alembic import context
from app.core.config import settings_or_exit
from app.database.base import Base, is_outside_the_model
from app.database.engine import resolve_targets
from app.database.roles import RUNTIME_ROLE, scram_sha256_verifier
from app.models import AuditLog, Document, DocumentChunk, Tenant, User  # noqa: F401  (register)

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging_config"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")

target_metadata = Base.metadata

# A migration waits at most this long for a lock, so it never stalls production traffic for long.
LOCK_TIMEOUT = "10s"


def _include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    return not is_outside_the_model(obj, name, type_)


def _ensure_runtime_login(connection: Connection, password: str | None) -> None:
    """Let the runtime role log in with `password` (the strong mode); sent as a SCRAM verifier."""
    if not password:
        return
    exists = connection.execute(
        text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": RUNTIME_ROLE}
    ).scalar()
    if exists:
        verifier = scram_sha256_verifier(password)
        connection.exec_driver_sql(f"ALTER ROLE {RUNTIME_ROLE} WITH LOGIN PASSWORD '{verifier}'")


def _run(connection: Connection, runtime_password: str | None) -> None:
    connection.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=_include_object,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()
        _ensure_runtime_login(connection, runtime_password)


def run_migrations_online() -> None:
    """Run against `config.attributes['connection']` if given, else DATABASE_URL's login."""
    supplied = config.attributes.get("connection")
    if supplied is not None:
        _run(supplied, config.attributes.get("runtime_password"))
        return
    targets = resolve_targets(settings_or_exit())
    engine = create_engine(targets.login_url, poolclass=None)
    with engine.connect() as connection:
        _run(connection, targets.runtime_password)
        connection.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")
run_migrations_online()
