"""The service kit: the scoped statement every tenant-scoped query starts from, and its helpers.

A service function takes `(session, actor, ...)` (`app.services.actor.Actor`), starts each
query from its table's `TenantScoped.statement(actor)` (the tenant filter and the soft-delete
default decided once, as Polar's repositories do with `get_base_statement`), `flush()`es and
never commits: the caller's transaction (`app.database.session.tenant_transaction` or
`admin_transaction`) owns it. RLS in the database is the backstop when a query forgets the
filter; the filter is still written here, so the intent is readable and testable.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.core.errors import NotFoundError
from app.database.base import Base, SoftDeleteMixin
from app.services import audit
from app.services.actor import Actor
from app.services.pagination import CursorCodec, PageRequest, fetch_page, query_fingerprint

ModelT = TypeVar("ModelT", bound=Base)


@dataclass(frozen=True)
class ListFilters:
    """Base of a listing's filters: a dataclass whose fields bind its cursors."""

    def fingerprint(self) -> str:
        """Digest binding a cursor to these filters."""
        return query_fingerprint(asdict(self))


class TenantScoped(Generic[ModelT]):
    """A table's scoped base statement, its get-or-404 and its newest-first pages.

    `tenant_column` is the column naming the row's tenant (the tenants table's own `id`).
    """

    def __init__(
        self,
        model: type[ModelT],
        name: str,
        tenant_column: InstrumentedAttribute[uuid.UUID] | None = None,
    ) -> None:
        self.model = model
        self.name = name
        self.tenant_column: InstrumentedAttribute[uuid.UUID] = (
            tenant_column if tenant_column is not None else model.tenant_id  # type: ignore[attr-defined]
        )
        self.soft_deletes = issubclass(model, SoftDeleteMixin)

    def statement(self, actor: Actor, *, include_deleted: bool = False) -> Select[ModelT]:
        """SELECT of the actor's tenant's rows; soft-deleted ones only with `include_deleted`."""
        return self.in_tenant(actor.tenant_id, include_deleted=include_deleted)

    def in_tenant(
        self, tenant_id: uuid.UUID | None, *, include_deleted: bool = False
    ) -> Select[ModelT]:
        """SELECT of one tenant's rows (every tenant's with None: operators only)."""
        statement = select(self.model)
        if tenant_id is not None:
            statement = statement.where(self.tenant_column == tenant_id)
        if self.soft_deletes and not include_deleted:
            statement = statement.where(self.model.deleted_at.is_(None))  # type: ignore[attr-defined]
        return statement

    def visible(self, actor: Actor, *, include_deleted: bool = False) -> Select[ModelT]:
        """The base statement as a caller asked for it: deleted rows only for admins who ask."""
        return self.statement(actor, include_deleted=actor.may_see_deleted(include_deleted))

    async def get_visible(
        self,
        session: AsyncSession,
        actor: Actor,
        row_id: uuid.UUID,
        *,
        include_deleted: bool = False,
    ) -> ModelT:
        """A row as a caller asked for it (see `visible`), or NotFoundError."""
        include_deleted = actor.may_see_deleted(include_deleted)
        return await self.get_or_404(session, actor, row_id, include_deleted=include_deleted)

    async def get_or_404(
        self,
        session: AsyncSession,
        actor: Actor,
        row_id: uuid.UUID,
        *,
        include_deleted: bool = False,
        for_update: bool = False,
    ) -> ModelT:
        """The row, or NotFoundError: the same for another tenant's id as for a random one."""
        statement = self.statement(actor, include_deleted=include_deleted)
        statement = statement.where(self.model.id == row_id)
        if for_update:
            statement = statement.with_for_update()
        row = (await session.scalars(statement)).first()
        if row is None:
            # The operator is told which id; an API caller learns nothing beyond "not here".
            message = f"no {self.name} with id {row_id}" if actor.is_operator else None
            raise NotFoundError(message or f"{self.name} not found")
        return row

    def filtered(
        self,
        statement: Select[ModelT],
        equal: Mapping[InstrumentedAttribute[Any], object | None],
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Select[ModelT]:
        """`statement` narrowed by each given (not None) equality and a creation-time range."""
        for column, value in equal.items():
            if value is not None:
                statement = statement.where(column == value)
        if created_after is not None:
            statement = statement.where(self.model.created_at >= created_after)
        if created_before is not None:
            statement = statement.where(self.model.created_at < created_before)
        return statement

    async def page(
        self,
        session: AsyncSession,
        actor: Actor,
        statement: Select[ModelT],
        page: PageRequest,
        codec: CursorCodec,
        fingerprint: str,
    ) -> tuple[list[ModelT], str | None]:
        """One newest-first page of `statement` and the next page's cursor (None at the end)."""
        return await fetch_page(
            session, statement, self.model, page, codec, actor.own_tenant(), fingerprint
        )


async def soft_delete(session: AsyncSession, actor: Actor, row: Any, action: str) -> None:
    """Soft-delete `row` and audit `action`; an already deleted row is left as it is."""
    if row.deleted_at is not None:
        return
    row.soft_delete()
    await session.flush()
    await audit.record(session, actor, action, row, changed=["deleted_at"])


async def restore(session: AsyncSession, actor: Actor, row: Any, action: str) -> None:
    """Restore a soft-deleted `row` and audit `action`; an active row is left as it is."""
    if row.deleted_at is None:
        return
    row.restore()
    await session.flush()
    await audit.record(session, actor, action, row, changed=["deleted_at"])
