"""Fixtures for a database on a primary with a streaming replica (issue 22's read replicas).

`replica_pair` starts the two servers once per run (only when a test asks); `replica_database`
is a migrated database on them with the app's `Database` routing reads to the replica, and the
engines tests use on each side. Imported by the root conftest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database import Database
from app.database.engine import build_runtime_engine, targets_for
from app.database.replicas import ReadRouting, open_read_routing
from app.database.session import make_sessionmaker
from testkit import database_harness as harness
from testkit.auth_helpers import IssuerServer
from testkit.replication import ReplicaPair, start_replica_pair
from tests.own_database import DatabaseSet, open_database_set


@dataclass
class ReplicaDatabase:
    """A migrated database on the replica pair, and the app's view of it."""

    pair: ReplicaPair
    primary: DatabaseSet  # the usual engines, on the primary
    settings: Settings  # with DATABASE_REPLICA_URLS naming the replica
    database: Database  # runtime engine on the primary, reads routed to the replica
    replica_runtime_engine: AsyncEngine
    replica_runtime_sessions: async_sessionmaker[AsyncSession]

    @property
    def reads(self) -> ReadRouting:
        """The routing the app uses."""
        assert self.database.reads is not None
        return self.database.reads

    @property
    def name(self) -> str:
        """The database's name (the same on both servers)."""
        return self.primary.migrated_db.name


@pytest.fixture(scope="session")
def replica_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaPair]:
    """A primary and its streaming replica, for the run (started on first use)."""
    pair = start_replica_pair(tmp_path_factory.mktemp("replication"))
    yield pair
    pair.replica.destroy()
    assert pair.primary.embedded is not None
    pair.primary.embedded.destroy()


@pytest.fixture(scope="session")
async def replica_database(
    replica_pair: ReplicaPair, issuer_server: IssuerServer, dev_key_file: Path
) -> AsyncIterator[ReplicaDatabase]:
    """A migrated database on the pair; the app's reads go to the replica (lag bound 1 s)."""
    primary = open_database_set(replica_pair.primary, issuer_server, dev_key_file)
    owner_url = primary.migrated_db.owner_url
    replica_owner_url = replica_pair.replica_url(owner_url)
    settings = primary.settings.model_copy(
        update={
            "DATABASE_REPLICA_URLS": [
                SecretStr(replica_owner_url.render_as_string(hide_password=False))
            ],
            "DATABASE_REPLICA_MAX_LAG_SECONDS": 1.0,
        }
    )
    targets = targets_for(owner_url, harness.RUNTIME_PASSWORD, [replica_owner_url])
    reads = open_read_routing(targets, settings, primary.runtime_engine)
    database = Database(targets, primary.runtime_engine, primary.runtime_sessions, reads)
    replica_engine = build_runtime_engine(
        targets_for(replica_owner_url, harness.RUNTIME_PASSWORD), settings
    )
    opened = ReplicaDatabase(
        pair=replica_pair,
        primary=primary,
        settings=settings,
        database=database,
        replica_runtime_engine=replica_engine,
        replica_runtime_sessions=make_sessionmaker(replica_engine),
    )
    yield opened
    await replica_engine.dispose()
    await database.dispose()
    await primary.owner_engine.dispose()
    harness.drop_database(replica_pair.primary, primary.migrated_db.name)
