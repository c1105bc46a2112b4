"""The orphan sweep: objects no document row points at, and multipart uploads never finished.

An upload stores its object first and records it in the document's row second
(app.services.document_content). A process killed between the two leaves an object that no
row names: unreadable through the API (every read starts from the row) but still stored.
A process killed during the upload leaves an unfinished multipart upload: no object at all,
but its parts are kept (and billed) until aborted. The sweep deletes the first and aborts the
second, once they are older than a grace period that covers any upload still in flight.

Runs as the provisioning role (it reads every tenant's rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.object_store import ObjectInfo, ObjectStore
from app.database.base import utcnow
from app.database.session import admin_transaction
from app.models import Document
from app.services.document_content import OBJECT_KEY_PREFIX

DEFAULT_GRACE = timedelta(hours=1)
_PAGE = 500


@dataclass
class SweepReport:
    """What the sweep found and removed."""

    examined: int = 0
    deleted: list[str] = field(default_factory=list)
    aborted_uploads: int = 0


async def _referenced(sessions: async_sessionmaker[AsyncSession], keys: list[str]) -> set[str]:
    async with admin_transaction(sessions) as session:
        rows = await session.scalars(
            select(Document.content_object_key).where(Document.content_object_key.in_(keys))
        )
        return {key for key in rows if key is not None}


async def sweep_orphans(
    sessions: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    *,
    grace: timedelta = DEFAULT_GRACE,
    now: datetime | None = None,
) -> SweepReport:
    """Delete content objects older than `grace` that no document names; abort unfinished
    uploads older than `grace`."""
    cutoff = (now or utcnow()) - grace
    report = SweepReport()
    page: list[ObjectInfo] = []

    async def settle(candidates: list[ObjectInfo]) -> None:
        referenced = await _referenced(sessions, [info.key for info in candidates])
        for info in candidates:
            if info.key not in referenced:
                await store.delete(info.key)
                report.deleted.append(info.key)

    async for info in store.list(OBJECT_KEY_PREFIX):
        report.examined += 1
        if info.last_modified < cutoff:
            page.append(info)
        if len(page) >= _PAGE:
            await settle(page)
            page = []
    if page:
        await settle(page)
    report.aborted_uploads = await store.abort_incomplete_uploads(OBJECT_KEY_PREFIX, cutoff)
    return report
