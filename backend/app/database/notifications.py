"""A dedicated connection that LISTENs on one channel and hands each payload to a subscriber.

PostgreSQL delivers a NOTIFY to every session listening on its channel when the notifying
transaction commits. A subscriber can trust that it has heard every change only while the
listening connection is up: so it is told when listening starts (after `LISTEN` has
succeeded: from then on no commit is missed) and when it stops (the connection failed or the
listener was stopped: from then on anything may have been missed). The listener reconnects
after `retry_seconds`, and checks its connection with a query every `heartbeat_seconds` of
silence (`heartbeat_sql`, also run right after LISTEN), so a connection that died without a
word is noticed within about that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from app.core.config import Settings
from app.database.engine import DatabaseTargets, session_options
from app.database.roles import RUNTIME_ROLE

logger = logging.getLogger(__name__)

LISTENER_APPLICATION_NAME = "tenant-docs-listener"


class NotificationSubscriber(Protocol):
    """What a NotificationListener reports to."""

    def listening_started(self) -> None:
        """LISTEN succeeded: every notification committed from now on will be delivered."""

    def listening_stopped(self) -> None:
        """The listener is down: notifications may be missed until `listening_started`."""

    def notified(self, payload: str) -> None:
        """One notification's payload."""


def listener_conninfo(targets: DatabaseTargets, settings: Settings) -> str:
    """A libpq conninfo for a listener: the runtime login, as the request engine connects."""
    url: URL = targets.runtime_url.set(drivername="postgresql")
    role = None if targets.runtime_logs_in else RUNTIME_ROLE
    return psycopg.conninfo.make_conninfo(
        url.render_as_string(hide_password=False),
        application_name=LISTENER_APPLICATION_NAME,
        connect_timeout=settings.DB_CONNECT_TIMEOUT_SECONDS,
        options=session_options(settings, role=role),
    )


class NotificationListener:
    """LISTEN `channel` on a connection of its own, in a background task (`start`/`stop`)."""

    def __init__(
        self,
        conninfo: str,
        channel: str,
        subscriber: NotificationSubscriber,
        *,
        heartbeat_sql: str = "SELECT 1",
        retry_seconds: float = 1.0,
        heartbeat_seconds: float = 5.0,
    ) -> None:
        self._conninfo = conninfo
        self._heartbeat_sql = heartbeat_sql
        self._channel = channel
        self._subscriber = subscriber
        self.retry_seconds = retry_seconds
        self._heartbeat_seconds = heartbeat_seconds
        self._task: asyncio.Task[None] | None = None
        self.backend_pid: int | None = None
        """The listening connection's server process while it is up (tests end it to test)."""

    def start(self) -> None:
        """Start listening in the background (returns at once; the subscriber hears when up)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"listen {self._channel}")

    async def stop(self) -> None:
        """Stop listening and close the connection; the subscriber hears `listening_stopped`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                logger.warning(
                    "notification listener down, retrying",
                    extra={"channel": self._channel, "error": type(exc).__name__},
                )
            finally:
                self.backend_pid = None
                self._subscriber.listening_stopped()
            await asyncio.sleep(self.retry_seconds)

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True
        ) as connection:
            await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            self.backend_pid = connection.info.backend_pid
            self._subscriber.listening_started()
            while True:
                # At once, then after every heartbeat of silence: proves the connection still
                # answers (and may send the subscriber a mark of its own).
                await asyncio.wait_for(
                    connection.execute(self._heartbeat_sql), self._heartbeat_seconds
                )
                async for notification in connection.notifies(timeout=self._heartbeat_seconds):
                    self._subscriber.notified(notification.payload)
