"""Readiness checks: the database answers, pgvector is installed, the schema is at head."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.database import Database
from app.database.migrations import head_revision
from app.database.safety import runtime_role_problems
from app.database.unavailable import describe_unavailable

logger = logging.getLogger(__name__)

_FACTS = text(
    "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS vector,"
    " (SELECT version_num FROM alembic_version LIMIT 1) AS revision"
)
_FACTS_WITHOUT_SCHEMA = text(
    "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS vector,"
    " NULL AS revision"
)
_HAS_VERSION_TABLE = text("SELECT to_regclass('alembic_version') IS NOT NULL")

READINESS_CACHE_SECONDS = 1.0
"""How long one readiness check answers every probe (so an outage shows within this)."""

READINESS_TIMEOUT_SECONDS = 2.0
"""Longest a readiness check may take before it reports the database as timed out."""


class ReadinessProbe:
    """Readiness for an unauthenticated route: at most one database check per second.

    Anyone can call /health/ready, so it must not cost a database round trip per call. The
    result is kept for `cache_seconds`, and concurrent callers share one check (single flight:
    the rest wait on the lock, then find the fresh result).
    """

    def __init__(
        self,
        *,
        cache_seconds: float = READINESS_CACHE_SECONDS,
        timeout_seconds: float = READINESS_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_seconds = cache_seconds
        self.timeout_seconds = timeout_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._checks: dict[str, str] | None = None
        self._checked_at = 0.0

    async def checks(self, database: Database) -> dict[str, str]:
        """Each check's result ("ok" or a reason), at most `cache_seconds` old."""
        cached = self._fresh()
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._fresh()
            if cached is not None:
                return cached  # checked by the caller we waited behind
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    checks = await readiness(database)
            except TimeoutError:
                checks = {"database": "timed out"}
            self._checks, self._checked_at = checks, self._clock()
            return checks

    def _fresh(self) -> dict[str, str] | None:
        if self._checks is not None and self._clock() - self._checked_at < self.cache_seconds:
            return self._checks
        return None


async def readiness(database: Database) -> dict[str, str]:
    """Each check's result: "ok" or a short reason."""
    checks = {"database": "ok", "vector_extension": "ok", "schema": "ok", "runtime_role": "ok"}
    try:
        async with database.engine.connect() as connection:
            has_schema = (await connection.execute(_HAS_VERSION_TABLE)).scalar()
            facts = (
                await connection.execute(_FACTS if has_schema else _FACTS_WITHOUT_SCHEMA)
            ).one()
            problems = await runtime_role_problems(connection)
            await connection.rollback()
    except (SQLAlchemyError, OSError) as exc:
        # The cause (host:port and why) is for the operator's log, never the probe's response.
        logger.warning(
            "readiness: database unreachable",
            extra={
                "error": type(exc).__name__,
                "cause": describe_unavailable(database.targets.runtime_url, exc)
                or (str(exc).splitlines() or [type(exc).__name__])[0],
            },
        )
        return {
            **checks,
            "database": "unreachable",
            "vector_extension": "unknown",
            "schema": "unknown",
            "runtime_role": "unknown",
        }
    if facts.vector is None:
        checks["vector_extension"] = "missing: the 'vector' extension is not installed"
    expected = head_revision()
    if facts.revision != expected:
        checks["schema"] = f"behind: at {facts.revision or 'nothing'}, head is {expected}"
    if problems:
        checks["runtime_role"] = "unsafe: " + "; ".join(problems)
    return checks
