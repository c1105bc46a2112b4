"""Who a token's caller is, remembered per worker while a listener hears every change.

The caller lookup (app.services.callers) costs a statement per request, as much as a
single-row read (issue 20). This cache lets a request skip it, on these terms:

- **Pushed invalidation.** Triggers on `tenants` and `users` (migration 3c9e1f5a7b20) send
  `<tenant id>:<number>` on the `caller_changes` channel when a row changes, at commit, the
  numbers from `caller_change_seq` in commit order; every worker LISTENs on a connection of
  its own (app.database.notifications) and drops that tenant's entries on arrival.
- **Never behind the request.** A notification reaches the listener a little after the
  commit. So each request reads the sequence in its transaction's first round trip
  (app.database.tenant_context.enter_tenant) and gets a cached caller only if the listener
  has heard that number: a change committed before the request began is always either
  heard (its entries gone) or makes the request look its caller up. The listener also sends
  its own numbered mark (`caller_changes_sync()`, at start and every heartbeat), so a number
  taken by a transaction that then failed to commit holds the cache back one heartbeat at
  most.
- **Fails closed.** Entries are served only while the listener is up. When it goes down the
  cache is emptied and bypassed (every request looks its caller up), and it starts empty when
  the listener is back, since notifications may have been missed meanwhile.
- **No stale store.** A lookup that started before a notification (or a listener restart)
  must not store what it read: `generation` counts both, the request reads it before its
  lookup, and `store` refuses when it has moved.
- **Bounded age.** An entry lapses after LAST_LOGIN_RESOLUTION (one minute), so the lookup
  still runs, and stamps `last_login_at`, about once a minute per active user.

Where it applies: every request's caller check runs on the primary (a read a replica serves
is checked there first, app/api/deps.py), so the counter is always the primary's. Behind
pgbouncer in transaction mode no listener starts (app.main.caller_listener) and the cache
serves nothing.

Only positive answers are kept: a refused caller is looked up again on every request. Bounded
by MAX_ENTRIES per worker, least recently used evicted first.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from app.services.callers import LAST_LOGIN_RESOLUTION, Caller

CHANNEL = "caller_changes"
SYNC_SQL = "SELECT caller_changes_sync()"
_SYNC_PREFIX = "sync:"
MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    caller: Caller
    lapses_at: float


class CallerCache:
    """(tenant id, token subject) -> Caller, LRU, per worker (see the module docstring).

    It is a NotificationSubscriber: give it to the `caller_changes` listener.
    """

    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_age_seconds: float = LAST_LOGIN_RESOLUTION.total_seconds(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self._max_age = max_age_seconds
        self._clock = clock
        self._entries: OrderedDict[tuple[uuid.UUID, str], _Entry] = OrderedDict()
        self._listening = False
        self._heard = 0  # the highest caller_change_seq number the listener has delivered
        self.generation = 0
        """Moves on every eviction and listener start or stop (read it before a lookup)."""

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def listening(self) -> bool:
        """True while the listener is up, i.e. while entries may be served."""
        return self._listening

    def get(self, tenant_id: uuid.UUID, subject: str, changes: int) -> Caller | None:
        """The cached caller, or None (not cached, lapsed, the listener down or behind).

        `changes`: caller_change_seq as the request's transaction began.
        """
        if not self._listening or changes > self._heard:
            return None
        key = (tenant_id, subject)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry.lapses_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.caller

    def store(self, subject: str, caller: Caller, generation: int) -> None:
        """Keep `caller`, looked up after `generation` was read, unless anything moved since."""
        if not self._listening or generation != self.generation:
            return
        self._entries[(caller.tenant_id, subject)] = _Entry(caller, self._clock() + self._max_age)
        self._entries.move_to_end((caller.tenant_id, subject))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def evict_tenant(self, tenant_id: uuid.UUID | None) -> None:
        """Drop every entry of `tenant_id` (None: every entry)."""
        self.generation += 1
        if tenant_id is None:
            self._entries.clear()
            return
        for key in [key for key in self._entries if key[0] == tenant_id]:
            del self._entries[key]

    def listening_started(self) -> None:
        """The listener is up: serve entries again, from none, once its first mark is heard."""
        self.evict_tenant(None)
        self._heard = 0
        self._listening = True

    def listening_stopped(self) -> None:
        """The listener is down: changes may go unheard, so serve nothing until it is back."""
        self._listening = False
        self.evict_tenant(None)

    def notified(self, payload: str) -> None:
        """A `caller_changes` notification: `<tenant id>:<number>` or `sync:<number>`.

        Anything else drops every entry (it can't be told whose it is) and counts as heard
        nothing.
        """
        subject, _, number = payload.rpartition(":")
        try:
            heard = int(number)
            tenant_id = None if subject == _SYNC_PREFIX[:-1] else uuid.UUID(subject)
        except ValueError:
            self.evict_tenant(None)
            return
        if tenant_id is not None:
            self.evict_tenant(tenant_id)
        self._heard = max(self._heard, heard)
