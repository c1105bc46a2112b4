"""Read replicas: which node serves a read, and the consistency token for reading one's writes.

Read-only routes are served by a streaming replica when one is up, replays within
DATABASE_REPLICA_MAX_LAG_SECONDS, and (when the request carries a consistency token) has
replayed the write the token names; otherwise by the primary. docs/SCALING.md explains the
model; tests/test_database/test_read_replicas.py runs it against a real primary and replica.

How lag is measured: every refresh samples the primary's WAL position (pg_current_wal_lsn)
and each replica's replayed position (pg_last_wal_replay_lsn). A replica that has replayed
everything the primary had written at the previous sample is at most one refresh interval
behind; otherwise its lag is the age of the oldest sample it has not replayed yet. A replica
that fails a check is skipped until a later check succeeds. Refreshes run in the background,
at most one at a time, when the last one is older than REFRESH_SECONDS: a request never waits
for one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from sqlalchemy import TextClause, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core import signing
from app.core.config import Settings
from app.core.errors import InvalidInputError
from app.database.engine import DatabaseTargets, build_runtime_engine, replica_targets
from app.database.session import make_sessionmaker

logger = logging.getLogger(__name__)

CONSISTENCY_HEADER = "X-Consistency-Token"
# How often (at most) the replicas' positions are checked, in seconds.
REFRESH_SECONDS = 0.5
# Primary position samples kept: enough to measure a lag well past any sensible bound.
_SAMPLES = 512

_PRIMARY_POSITION = text("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
# NULL on a server that is not in recovery (a "replica" URL that points at a primary).
_REPLAYED_POSITION = text("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")


def unreachable(error: BaseException) -> bool:
    """True if `error` says the server could not be reached (not that a statement failed).

    A connection failure has no SQLSTATE or one of class 08; a pool timeout means no
    connection could be had in time.
    """
    if isinstance(error, PoolTimeoutError):
        return True
    state = getattr(getattr(error, "orig", None), "sqlstate", None)
    return state is None or state.startswith("08")


class InvalidConsistencyTokenError(InvalidInputError):
    """The consistency token was not issued by this service for this tenant."""


def issue_token(key: bytes, tenant_id: uuid.UUID, position: int) -> str:
    """A token naming a WAL position, valid only for `tenant_id`."""
    return signing.seal(key, json.dumps([position, str(tenant_id)]).encode())


def read_token(key: bytes, tenant_id: uuid.UUID, token: str) -> int:
    """The WAL position a token names; InvalidConsistencyTokenError if it is not this tenant's."""
    message = f"{CONSISTENCY_HEADER}: not a token issued to this tenant"
    payload = signing.unseal(key, token) if len(token) <= 256 else None
    if payload is None:
        raise InvalidConsistencyTokenError(message)
    try:
        position, token_tenant = json.loads(payload)
    except (ValueError, TypeError):
        raise InvalidConsistencyTokenError(message) from None
    if token_tenant != str(tenant_id) or not isinstance(position, int) or position < 0:
        raise InvalidConsistencyTokenError(message)
    return position


@dataclass
class Replica:
    """One read replica: its runtime engine and what the last check found."""

    name: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    replayed: int | None = None  # last replayed WAL position seen; None: never reached
    up: bool = False
    lag_seconds: float = float("inf")


@dataclass
class ReadRouting:
    """Chooses the node a read goes to; keeps the replicas' positions fresh in the background."""

    primary: AsyncEngine
    replicas: list[Replica]
    max_lag_seconds: float
    check_timeout_seconds: float = 2.0
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    _checked_at: float = float("-inf")
    _refreshing: asyncio.Task[None] | None = None
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def choose(self, min_position: int | None = None) -> Replica | None:
        """A replica fit to serve a read (one that has replayed `min_position`), or None.

        None means the primary serves it. Starts a background refresh when the last is stale.
        """
        self._refresh_soon()
        fit = [
            replica
            for replica in self.replicas
            if replica.up
            and replica.lag_seconds <= self.max_lag_seconds
            and (min_position is None or (replica.replayed or 0) >= min_position)
        ]
        if not fit:
            return None
        return fit[next(self._turn) % len(fit)]

    def mark_down(self, replica: Replica, error: BaseException) -> None:
        """Skip `replica` until a later check finds it up again (a request could not use it)."""
        replica.up = False
        logger.warning(
            "read replica unavailable, reads go to the primary",
            extra={"replica": replica.name, "error": type(error).__name__},
        )

    async def refresh(self) -> None:
        """Check the primary's position and every replica's, now."""
        self._checked_at = time.monotonic()
        primary_position = await self._position(self.primary, _PRIMARY_POSITION)
        now = time.monotonic()
        if primary_position is not None:
            self._samples.append((now, primary_position))
        replayed = await asyncio.gather(
            *(self._position(replica.engine, _REPLAYED_POSITION) for replica in self.replicas)
        )
        for replica, position in zip(self.replicas, replayed, strict=True):
            replica.up = position is not None
            if position is not None:
                replica.replayed = max(position, replica.replayed or 0)
                replica.lag_seconds = self._lag(position, now)

    def _lag(self, replayed: int, now: float) -> float:
        # The oldest primary sample the replica has not replayed: its writes are at least as
        # old as that sample. None unreplayed: caught up as of the newest sample.
        for sampled_at, position in self._samples:
            if position > replayed:
                return now - sampled_at
        return 0.0

    async def _position(self, engine: AsyncEngine, query: TextClause) -> int | None:
        try:
            async with asyncio.timeout(self.check_timeout_seconds), engine.connect() as connection:
                position = (await connection.execute(query)).scalar_one()
                await connection.rollback()
        except Exception as exc:
            logger.info("replica check failed", extra={"error": type(exc).__name__})
            return None
        return int(position) if position is not None else None

    def _refresh_soon(self) -> None:
        stale = time.monotonic() - self._checked_at > REFRESH_SECONDS
        if stale and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh())

    async def dispose(self) -> None:
        """Stop a running refresh and close the replicas' pooled connections."""
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
        for replica in self.replicas:
            await replica.engine.dispose()


def open_read_routing(
    targets: DatabaseTargets, settings: Settings, primary: AsyncEngine
) -> ReadRouting | None:
    """Runtime engines for the configured replicas and the routing over them (None: none)."""
    replicas = []
    for number, replica in enumerate(replica_targets(targets), start=1):
        engine = build_runtime_engine(replica, settings, application_name="tenant-docs-reads")
        url = replica.login_url
        where = f"{url.host or url.query.get('host')}:{url.port or 5432}"
        replicas.append(Replica(f"replica {number} ({where})", engine, make_sessionmaker(engine)))
    if not replicas:
        return None
    return ReadRouting(
        primary,
        replicas,
        max_lag_seconds=settings.DATABASE_REPLICA_MAX_LAG_SECONDS,
        check_timeout_seconds=float(settings.DB_CONNECT_TIMEOUT_SECONDS),
    )
