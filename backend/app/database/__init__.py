"""Database layer: Base and mixins, the engine factory, sessions and the tenant context."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.database.engine import DatabaseTargets
from app.database.replicas import ReadRouting


@dataclass
class Database:
    """What a running app holds: where the database is and the runtime engine's sessions.

    `reads` chooses a read replica for read-only requests (None without replicas).
    """

    targets: DatabaseTargets
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    reads: ReadRouting | None = None

    async def dispose(self) -> None:
        """Close every pooled connection (the replicas' too)."""
        if self.reads is not None:
            await self.reads.dispose()
        await self.engine.dispose()
