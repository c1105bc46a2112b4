"""Request admission (the request dependency applies it): per-tenant limits, so one noisy tenant
can't starve the others of the database.

Two limits per tenant, checked after the token is verified (the tenant comes from the signed
token, so nobody can spend another tenant's budget) and before the request's transaction opens:

- a token bucket: TENANT_RATE_LIMIT_PER_SECOND requests per second on average, bursts of up to
  TENANT_RATE_LIMIT_BURST;
- TENANT_MAX_CONCURRENT_REQUESTS requests in flight at once (each may hold a pooled connection);
  a request over it waits up to QUEUE_SECONDS for a slot (so a page firing a burst of requests
  is served), in line behind the tenant's own requests only.

Either answers 429 with Retry-After. Only a caller the database resolved to an active user is
charged to its tenant: `CallerAdmission` charges an identity that was refused (a deleted or never
provisioned user whose IdP still signs tokens) to a small budget of its own, so it can neither
spend its tenant's budget nor go unbounded (docs/SECURITY.md, "refused identities charged to a
shared budget"). The state lives in this process, per worker: with N
workers a tenant gets up to N times each limit in all. That is deliberate: a shared store
(Redis, or a table in PostgreSQL) would put a network round trip, and a second thing that can
fail or be saturated, in front of every request, and a limit kept *in the database* would spend
the very resource it protects. Per-worker limits bound what one tenant takes from each worker's
pool, which is what keeps the others served; size them as `database capacity / workers`.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from app.core import metrics
from app.core.config import Settings
from app.core.errors import TooManyRequestsError
from app.services.tenant_export import EXPORT_RETRY_AFTER_SECONDS

QUEUE_SECONDS = 1.0
"""How long a request waits for one of its tenant's concurrency slots before the 429."""

REFUSED_RATE_PER_SECOND = 1.0
REFUSED_BURST = 3
REFUSED_MAX_CONCURRENT = 1
"""The budget of one refused identity: each of its requests rechecks it in the database."""

REFUSED_MEMORY_SECONDS = 60.0
"""How long an identity refused by the database is charged to its own budget."""

# Forget idle keys once this many are tracked, so the maps stay bounded by active tenants.
_PRUNE_ABOVE = 10_000


@dataclass
class _Bucket:
    tokens: float
    refilled_at: float


@dataclass
class _Slots:
    """One key's concurrency slots: a semaphore, and who holds or waits for it."""

    semaphore: asyncio.Semaphore
    running: int = 0
    users: int = 0  # running plus waiting: the entry is dropped when nobody uses it


class TenantLimiter:
    """Admit a request charged to a key (a tenant) or refuse it with 429; one per app and worker."""

    def __init__(
        self,
        *,
        rate_per_second: float,
        burst: int,
        max_concurrent: int,
        queue_seconds: float = QUEUE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        subject: str = "your tenant",
        metric_prefix: str = "tenant",
        busy_message: str | None = None,
        busy_retry_after_seconds: int = 1,
    ) -> None:
        self.rate_per_second = rate_per_second
        self.burst = burst
        self.max_concurrent = max_concurrent
        self.queue_seconds = queue_seconds
        self.subject = subject
        self.metric_prefix = (
            metric_prefix  # the 429 metric's reason: <prefix>_rate, ..._concurrency
        )
        # The 429's text and Retry-After when all of a key's slots are taken (None: generic).
        self.busy_message = busy_message
        self.busy_retry_after_seconds = busy_retry_after_seconds
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}
        self._slots: dict[Hashable, _Slots] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantLimiter:
        """The limiter the settings describe (0 turns a limit off)."""
        return cls(
            rate_per_second=settings.TENANT_RATE_LIMIT_PER_SECOND,
            burst=settings.TENANT_RATE_LIMIT_BURST,
            max_concurrent=settings.TENANT_MAX_CONCURRENT_REQUESTS,
        )

    def in_flight(self, key: Hashable) -> int:
        """Requests charged to `key` currently admitted and not finished."""
        slots = self._slots.get(key)
        return slots.running if slots else 0

    @asynccontextmanager
    async def admit(self, key: Hashable) -> AsyncIterator[None]:
        """Hold one of the key's slots for the block; raise TooManyRequestsError if none."""
        if self.rate_per_second:
            self._take_token(key)
        if not self.max_concurrent:
            yield
            return
        slots = await self._acquire_slot(key)
        try:
            yield
        finally:
            slots.running -= 1
            slots.semaphore.release()
            self._leave(key, slots)

    def refund_token(self, key: Hashable) -> None:
        """Give back the rate token a request took (it turned out not to be the key's)."""
        bucket = self._buckets.get(key)
        if self.rate_per_second and bucket is not None:
            bucket.tokens = min(float(self.burst), bucket.tokens + 1.0)

    def _take_token(self, key: Hashable) -> None:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_ABOVE:
                self._forget_full_buckets(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            elapsed = now - bucket.refilled_at
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_second)
            bucket.refilled_at = now
        if bucket.tokens < 1.0:
            metrics.RATE_LIMITED.labels(reason=f"{self.metric_prefix}_rate").inc()
            wait = math.ceil((1.0 - bucket.tokens) / self.rate_per_second)
            raise TooManyRequestsError(
                f"{self.subject} is over its limit of {self.rate_per_second:g} requests per"
                f" second (bursts up to {self.burst}); retry after {wait} s",
                retry_after_seconds=max(1, wait),
            )
        bucket.tokens -= 1.0

    def _forget_full_buckets(self, now: float) -> None:
        """Drop buckets that have refilled completely: a new one starts full, the same state."""
        full_after = self.burst / self.rate_per_second
        for key in [k for k, b in self._buckets.items() if now - b.refilled_at >= full_after]:
            del self._buckets[key]

    async def _acquire_slot(self, key: Hashable) -> _Slots:
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = _Slots(asyncio.Semaphore(self.max_concurrent))
        slots.users += 1
        try:
            # Full: wait briefly in line (a burst from a page load shouldn't fail), then refuse.
            # The semaphore queues fairly and copes with cancellation at any point.
            async with asyncio.timeout(self.queue_seconds):
                await slots.semaphore.acquire()
        except TimeoutError:
            self._leave(key, slots)
            metrics.RATE_LIMITED.labels(reason=f"{self.metric_prefix}_concurrency").inc()
            raise TooManyRequestsError(
                self.busy_message
                or f"{self.subject} already has {self.max_concurrent} requests in progress, the"
                " limit; retry when one has finished",
                retry_after_seconds=self.busy_retry_after_seconds,
            ) from None
        except BaseException:
            self._leave(key, slots)  # cancelled (client gone): out of the line, nothing held
            raise
        slots.running += 1
        return slots

    def _leave(self, key: Hashable, slots: _Slots) -> None:
        slots.users -= 1
        if not slots.users:
            del self._slots[key]


def export_limiter(settings: Settings) -> TenantLimiter:
    """The cap on export streams in this worker (TENANT_EXPORT_MAX_CONCURRENT), whoever's they
    are: each holds a pooled connection for as long as its client reads, outside the request
    limits above, so the cap is what keeps the rest of the pool for requests. One key
    (`ALL_EXPORTS`), no waiting: over the cap, 429 at once (reason `export_concurrency`)."""
    cap = settings.TENANT_EXPORT_MAX_CONCURRENT
    return TenantLimiter(
        rate_per_second=0,
        burst=1,
        max_concurrent=cap,
        queue_seconds=0,
        metric_prefix="export",
        busy_message=f"exports are busy: {cap} tenant exports are being streamed from this"
        " server, its limit; retry after the Retry-After seconds",
        busy_retry_after_seconds=EXPORT_RETRY_AFTER_SECONDS,
    )


ALL_EXPORTS = "all exports"
"""The export limiter's one key: the cap is on this worker's exports, whoever's they are."""


@dataclass
class AdmissionTicket:
    """One admitted request; `refuse()` says the database did not resolve its caller."""

    charged_to_tenant: bool
    refused: bool = field(default=False, init=False)

    def refuse(self) -> None:
        """Mark the caller as refused: its tenant gets the charge back."""
        self.refused = True


IdentityKey = tuple[uuid.UUID, str]
"""(tenant id, subject) as a verified token names them."""


class CallerAdmission:
    """Charge a request to its tenant, or to the identity's own budget once it was refused.

    A verified token names a tenant, but only the caller lookup (in the database) shows that
    the subject is an active user of it. The first request of an identity is charged to its
    tenant while the lookup runs; if the lookup refuses it, the rate token is given back and the
    identity is remembered for REFUSED_MEMORY_SECONDS. Meanwhile its requests are charged to a
    budget of its own (`refused`), never to the tenant's: each is looked up again (a user
    provisioned meanwhile gets in at once) and bounded by that budget.
    """

    def __init__(
        self,
        tenants: TenantLimiter,
        *,
        refused: TenantLimiter | None = None,
        remember_seconds: float = REFUSED_MEMORY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tenants = tenants
        self.refused = refused or TenantLimiter(
            rate_per_second=REFUSED_RATE_PER_SECOND,
            burst=REFUSED_BURST,
            max_concurrent=REFUSED_MAX_CONCURRENT,
            clock=clock,
            subject="this identity (refused access)",
            metric_prefix="refused_identity",
        )
        self.remember_seconds = remember_seconds
        self._clock = clock
        self._refused_until: dict[IdentityKey, float] = {}

    @asynccontextmanager
    async def admit(self, identity: IdentityKey) -> AsyncIterator[AdmissionTicket]:
        """Hold a slot of the tenant's (or of a refused identity's own) for the block."""
        tenant_id = identity[0]
        if self._recently_refused(identity):
            ticket = AdmissionTicket(charged_to_tenant=False)
            async with self.refused.admit(identity):
                try:
                    yield ticket
                finally:
                    self._settle(identity, ticket)
            return
        ticket = AdmissionTicket(charged_to_tenant=True)
        async with self.tenants.admit(tenant_id):
            try:
                yield ticket
            finally:
                if ticket.refused:
                    self.tenants.refund_token(tenant_id)
                self._settle(identity, ticket)

    def _recently_refused(self, identity: IdentityKey) -> bool:
        until = self._refused_until.get(identity)
        if until is None:
            return False
        if until > self._clock():
            return True
        del self._refused_until[identity]
        return False

    def _settle(self, identity: IdentityKey, ticket: AdmissionTicket) -> None:
        if not ticket.refused:
            self._refused_until.pop(identity, None)  # provisioned meanwhile: the tenant's again
            return
        now = self._clock()
        if len(self._refused_until) >= _PRUNE_ABOVE:
            for key in [k for k, until in self._refused_until.items() if until <= now]:
                del self._refused_until[key]
            while len(self._refused_until) >= _PRUNE_ABOVE:  # all current: drop the oldest
                del self._refused_until[next(iter(self._refused_until))]
        self._refused_until.pop(identity, None)
        self._refused_until[identity] = now + self.remember_seconds
