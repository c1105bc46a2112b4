"""Database layer: Base and mixins, the engine factory, sessions and the tenant context."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.database.engine import DatabaseTargets


@dataclass
class Database:
    """What a running app holds: where the database is and the runtime engine's sessions."""

    targets: DatabaseTargets
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
