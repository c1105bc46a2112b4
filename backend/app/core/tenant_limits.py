"""Per-tenant limits, so one noisy tenant can't starve the others of the database.

Two limits per tenant, checked after the token is verified (the tenant comes from the signed
token, so nobody can spend another tenant's budget) and before the request's transaction opens:

- a token bucket: TENANT_RATE_LIMIT_PER_SECOND requests per second on average, bursts of up to
  TENANT_RATE_LIMIT_BURST;
- TENANT_MAX_CONCURRENT_REQUESTS requests in flight at once (each may hold a pooled connection);
  a request over it waits up to QUEUE_SECONDS for a slot (so a page firing a burst of requests
  is served), in line behind the tenant's own requests only.

Either answers 429 with Retry-After. The state lives in this process, per worker: with N
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
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from app.core.config import Settings
from app.core.errors import TooManyRequestsError

QUEUE_SECONDS = 1.0
"""How long a request waits for one of its tenant's concurrency slots before the 429."""

# Forget idle tenants once this many are tracked, so the maps stay bounded by active tenants.
_PRUNE_ABOVE = 10_000


@dataclass
class _Bucket:
    tokens: float
    refilled_at: float


@dataclass
class _Slots:
    running: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)


class TenantLimiter:
    """Admit a tenant's request or refuse it with 429; one instance per app (per worker)."""

    def __init__(
        self,
        *,
        rate_per_second: float,
        burst: int,
        max_concurrent: int,
        queue_seconds: float = QUEUE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_second = rate_per_second
        self.burst = burst
        self.max_concurrent = max_concurrent
        self.queue_seconds = queue_seconds
        self._clock = clock
        self._buckets: dict[uuid.UUID, _Bucket] = {}
        self._slots: dict[uuid.UUID, _Slots] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantLimiter:
        """The limiter the settings describe (0 turns a limit off)."""
        return cls(
            rate_per_second=settings.TENANT_RATE_LIMIT_PER_SECOND,
            burst=settings.TENANT_RATE_LIMIT_BURST,
            max_concurrent=settings.TENANT_MAX_CONCURRENT_REQUESTS,
        )

    def in_flight(self, tenant_id: uuid.UUID) -> int:
        """Requests of `tenant_id` currently admitted and not finished."""
        slots = self._slots.get(tenant_id)
        return slots.running if slots else 0

    @asynccontextmanager
    async def admit(self, tenant_id: uuid.UUID) -> AsyncIterator[None]:
        """Hold one of the tenant's slots for the block; raise TooManyRequestsError if none."""
        if self.rate_per_second:
            self._take_token(tenant_id)
        if not self.max_concurrent:
            yield
            return
        await self._acquire_slot(tenant_id)
        try:
            yield
        finally:
            self._release_slot(tenant_id)

    def _take_token(self, tenant_id: uuid.UUID) -> None:
        now = self._clock()
        bucket = self._buckets.get(tenant_id)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_ABOVE:
                self._forget_full_buckets(now)
            bucket = self._buckets[tenant_id] = _Bucket(float(self.burst), now)
        else:
            elapsed = now - bucket.refilled_at
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_second)
            bucket.refilled_at = now
        if bucket.tokens < 1.0:
            wait = math.ceil((1.0 - bucket.tokens) / self.rate_per_second)
            raise TooManyRequestsError(
                f"your tenant is over its limit of {self.rate_per_second:g} requests per second"
                f" (bursts up to {self.burst}); retry after {wait} s",
                retry_after_seconds=max(1, wait),
            )
        bucket.tokens -= 1.0

    def _forget_full_buckets(self, now: float) -> None:
        """Drop buckets that have refilled completely: a new one starts full, the same state."""
        full_after = self.burst / self.rate_per_second
        for tenant_id in [t for t, b in self._buckets.items() if now - b.refilled_at >= full_after]:
            del self._buckets[tenant_id]

    async def _acquire_slot(self, tenant_id: uuid.UUID) -> None:
        # No await between the check and the count: atomic on the event loop.
        slots = self._slots.setdefault(tenant_id, _Slots())
        if slots.running < self.max_concurrent:
            slots.running += 1
            return
        # Full: wait briefly in line (a burst from a page load shouldn't fail), then refuse.
        handed_over: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slots.waiting.append(handed_over)
        try:
            async with asyncio.timeout(self.queue_seconds):
                await handed_over
        except TimeoutError:
            if handed_over.done() and not handed_over.cancelled():
                return  # a slot was handed over just as the wait ran out: keep it
            slots.waiting.remove(handed_over)
            self._forget_idle(tenant_id, slots)
            raise TooManyRequestsError(
                f"your tenant already has {self.max_concurrent} requests in progress, the"
                " limit; retry when one has finished",
                retry_after_seconds=1,
            ) from None
        except BaseException:
            # Cancelled (client gone): give back a slot handed over meanwhile, or leave the line.
            if handed_over.done() and not handed_over.cancelled():
                self._release_slot(tenant_id)
            else:
                handed_over.cancel()
                slots.waiting.remove(handed_over)
                self._forget_idle(tenant_id, slots)
            raise

    def _release_slot(self, tenant_id: uuid.UUID) -> None:
        slots = self._slots[tenant_id]
        while slots.waiting:
            waiter = slots.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next in line
                return
        slots.running -= 1
        self._forget_idle(tenant_id, slots)

    def _forget_idle(self, tenant_id: uuid.UUID, slots: _Slots) -> None:
        if not slots.running and not slots.waiting:
            del self._slots[tenant_id]
