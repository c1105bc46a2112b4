"""The one place that builds database engines, and how the app reaches its database."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core import metrics
from app.core.config import PoolMode, Settings, SettingsError
from app.database.roles import RUNTIME_ROLE
from app.database.tenant_context import (
    CITUS_OPTION,
    TRANSACTION_SETTINGS_OPTION,
    set_locally_calls,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatabaseTargets:
    """Where the app's database is and how each kind of code logs in to it.

    `login_url` is DATABASE_URL's login: it runs migrations and the admin CLI (which then
    switches to the provisioning role). `runtime_url` is what request handlers use: the runtime
    role's own login when a password is known (the strong mode), otherwise the login URL with
    the role switched at connection start-up (the fallback, which an injected `RESET ROLE`
    could undo).
    """

    login_url: URL
    runtime_url: URL
    runtime_password: str | None
    # Streaming replicas of the database, as login URLs (same roles and passwords).
    replica_login_urls: tuple[URL, ...] = ()

    @property
    def runtime_logs_in(self) -> bool:
        """True in the strong mode, where the app logs in as the runtime role itself."""
        return self.runtime_password is not None


def resolve_targets(settings: Settings) -> DatabaseTargets:
    """Work out the database targets, starting the embedded server when DATABASE_URL is unset."""
    login_url = settings.database_url
    replica_urls = settings.replica_urls
    password = (
        settings.APP_RUNTIME_PASSWORD.get_secret_value() if settings.APP_RUNTIME_PASSWORD else None
    )
    if login_url is None:
        if settings.is_production:
            raise SettingsError("DATABASE_URL: required when ENVIRONMENT=production")
        from app.database import embedded

        server = embedded.start_embedded(settings.EMBEDDED_DB_DIR)
        login_url = server.superuser_url()
        password = password or embedded.runtime_password_for(settings.EMBEDDED_DB_DIR)
        if settings.EMBEDDED_DB_REPLICA:
            replica_dir = settings.EMBEDDED_DB_DIR.with_name(
                settings.EMBEDDED_DB_DIR.name + "-replica"
            )
            replica_urls = [embedded.start_embedded_replica(server, replica_dir).superuser_url()]
    return targets_for(login_url, password, replica_urls)


def targets_for(
    login_url: URL, runtime_password: str | None, replica_login_urls: Sequence[URL] = ()
) -> DatabaseTargets:
    """Targets for a known login URL, (optional) runtime password and replicas."""
    if runtime_password:
        runtime_url = login_url.set(username=RUNTIME_ROLE, password=runtime_password)
    else:
        runtime_url = login_url
    return DatabaseTargets(
        login_url, runtime_url, runtime_password or None, tuple(replica_login_urls)
    )


def replica_targets(targets: DatabaseTargets) -> list[DatabaseTargets]:
    """Each replica's targets: the same logins as the primary's, on the replica's server."""
    return [targets_for(url, targets.runtime_password) for url in targets.replica_login_urls]


def session_settings(
    settings: Settings, *, role: str | None = None, server_settings: dict[str, str] | None = None
) -> dict[str, str]:
    """The server settings every app connection (or, pooled by transaction, transaction) has."""
    idle_timeout_ms = max(settings.DB_STATEMENT_TIMEOUT_MS * 4, 10_000)
    values = {
        "statement_timeout": str(settings.DB_STATEMENT_TIMEOUT_MS),
        # Waiting on a row lock is bounded too, so one stuck writer can't pile up requests.
        "lock_timeout": str(settings.DB_STATEMENT_TIMEOUT_MS),
        "idle_in_transaction_session_timeout": str(idle_timeout_ms),
        # psycopg prepares a statement after 5 runs, and PostgreSQL then switches to a generic
        # plan made for the *average* tenant. Tenant sizes are skewed (one tenant may hold 100x
        # the average), so a generic plan that suits the average tenant can be 50x slower for a
        # large one (bench/rls_cost.py: the metadata @> page went from 3 ms to 180 ms). Planning
        # each execution with the actual tenant id costs ~0.05 ms and keeps every plan right.
        # https://www.postgresql.org/docs/current/sql-prepare.html (plan_cache_mode)
        "plan_cache_mode": "force_custom_plan",
    }
    if role is not None:
        values["role"] = role
    # Later values win: a maintenance engine may lift the statement timeout this way.
    values.update(server_settings or {})
    return values


def session_options(
    settings: Settings, *, role: str | None = None, server_settings: dict[str, str] | None = None
) -> str:
    """`session_settings` as libpq `options` (start-up parameters: no round trip)."""
    return _as_options(session_settings(settings, role=role, server_settings=server_settings))


def _as_options(values: dict[str, str]) -> str:
    return " ".join(f"-c {name}={value}" for name, value in values.items())


def build_engine(
    url: URL,
    settings: Settings,
    *,
    role: str | None = None,
    application_name: str = "tenant-docs",
    pool_size: int | None = None,
    max_overflow: int | None = None,
    server_settings: dict[str, str] | None = None,
    autocommit: bool = False,
) -> AsyncEngine:
    """Build an async engine (psycopg 3) with bounded connect and statement timeouts.

    `role` is set as a start-up parameter of every connection (`-c role=…`), which costs no
    round trip; pass it when the login is not already the role the code must run as.
    `server_settings` are more start-up parameters (values without spaces), after the defaults.
    `autocommit`: the driver never sends a `BEGIN` of its own; every transaction on the engine
    must open itself (`tenant_transaction`'s opening message does: `build_runtime_engine`).
    """
    connect_args: dict[str, Any] = {
        "connect_timeout": settings.DB_CONNECT_TIMEOUT_SECONDS,
        "application_name": application_name,
    }
    values = session_settings(settings, role=role, server_settings=server_settings)
    by_transaction = settings.DATABASE_POOL_MODE is PoolMode.TRANSACTION
    if by_transaction:
        # pgbouncer in transaction mode hands each transaction any server connection: start-up
        # options are refused (pgbouncer < 1.21 knows only a few parameters), and a prepared
        # statement may not exist on the next one (protocol-level prepares need 1.21+). So no
        # prepares, and the settings are made transaction-local at each BEGIN instead.
        connect_args["prepare_threshold"] = None
    else:
        connect_args["options"] = _as_options(values)
    set_locally = set_locally_calls(values) if by_transaction else None
    engine = create_async_engine(
        url,
        # Read when a tenant transaction opens (app/database/tenant_context.py), whose one
        # opening message carries them: Citus needs SET LOCAL; a transaction-mode pool, the
        # settings in every transaction.
        execution_options={
            CITUS_OPTION: settings.DATABASE_CITUS,
            TRANSACTION_SETTINGS_OPTION: set_locally,
        },
        pool_size=settings.DB_POOL_SIZE if pool_size is None else pool_size,
        max_overflow=settings.DB_MAX_OVERFLOW if max_overflow is None else max_overflow,
        pool_timeout=settings.DB_POOL_TIMEOUT_SECONDS,
        # A dead connection (database restarted) is detected on use and the pool invalidated,
        # so the app recovers without a restart and without a ping round trip per checkout.
        pool_pre_ping=False,
        pool_recycle=1800,
        # A database error's text names the statement; without its parameters (PHI) in it.
        hide_parameters=True,
        connect_args=connect_args,
        # Set once per connection, never toggled per checkout (which costs a driver call on
        # the way out and back, on every request).
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )
    if set_locally is not None and not autocommit:
        settings_sql = f"SELECT {set_locally}"

        @event.listens_for(engine.sync_engine, "begin")
        def _transaction_settings(connection: Connection) -> None:
            # (An autocommit engine's transactions are tenant transactions: their opening
            # message carries the settings.)
            connection.exec_driver_sql(settings_sql)

    _count_connections_in_use(engine)
    return engine


def _count_connections_in_use(engine: AsyncEngine) -> None:
    """Keep the db_pool_connections_in_use gauge (app.core.metrics) in step with the pool."""

    def checked_out(*_args: Any) -> None:
        metrics.DB_POOL_IN_USE.inc()

    def checked_in(*_args: Any) -> None:
        # Also called for a connection invalidated while out (then it is None): it is back.
        metrics.DB_POOL_IN_USE.dec()

    event.listen(engine.sync_engine, "checkout", checked_out)
    event.listen(engine.sync_engine, "checkin", checked_in)


def build_runtime_engine(
    targets: DatabaseTargets, settings: Settings, **kwargs: Any
) -> AsyncEngine:
    """The engine request handlers use: always `app_runtime`, in either login mode.

    In autocommit mode: its transactions are `tenant_transaction`s, whose one opening message
    carries the `BEGIN` (app.database.tenant_context.enter_tenant), so the driver must not send
    one of its own (a round trip more per transaction).
    """
    role = None if targets.runtime_logs_in else RUNTIME_ROLE
    return build_engine(targets.runtime_url, settings, role=role, autocommit=True, **kwargs)
