"""Keyset pagination with opaque, signed cursors bound to the tenant and the query.

A cursor is the (created_at, id) of the last row of a page, plus the tenant and a fingerprint
of the query's filters, signed with HMAC-SHA256. A tampered, forged or foreign cursor (another
tenant's, or another query's) is refused instead of silently returning someone else's page.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pydantic import AwareDatetime, ConfigDict, TypeAdapter, ValidationError
from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import signing
from app.core.errors import InvalidInputError
from app.database.base import Base

_Row = TypeVar("_Row", bound=Base)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


class InvalidCursorError(InvalidInputError):
    """The cursor was not issued by this service for this tenant and query."""


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last row's creation time and id."""

    created_at: datetime
    id: uuid.UUID


def query_fingerprint(filters: dict[str, Any]) -> str:
    """A stable digest of a query's filters (a cursor only continues the same query)."""
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# A cursor's signed payload: [created_at, id, tenant id, query fingerprint].
_PAYLOAD = TypeAdapter(tuple[AwareDatetime, uuid.UUID, str, str], config=ConfigDict(strict=True))


class CursorCodec:
    """Signs and checks cursors with one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def encode(self, position: Position, tenant_id: uuid.UUID, fingerprint: str) -> str:
        """An opaque cursor for `position`, valid only for this tenant and query."""
        payload = json.dumps(
            [position.created_at.isoformat(), str(position.id), str(tenant_id), fingerprint],
            separators=(",", ":"),
        ).encode()
        return signing.seal(self._secret, payload)

    def decode(self, cursor: str, tenant_id: uuid.UUID, fingerprint: str) -> Position:
        """The position a cursor stands for, or InvalidCursorError."""
        if len(cursor) > 512:
            raise InvalidCursorError("cursor: too long")
        payload = signing.unseal(self._secret, cursor)
        if payload is None:
            raise InvalidCursorError("cursor: not a cursor issued for this query")
        # A good signature proves who made the cursor, not that its payload is well formed
        # (a leaked or guessed secret signs anything): check its shape before using it.
        try:
            created_at, row_id, cursor_tenant, cursor_fingerprint = _PAYLOAD.validate_json(payload)
        except ValidationError:
            raise InvalidCursorError(
                "cursor: malformed position (expected a creation time with time zone and a row id)"
            ) from None
        if cursor_tenant != str(tenant_id) or cursor_fingerprint != fingerprint:
            raise InvalidCursorError("cursor: not a cursor issued for this query")
        return Position(created_at, row_id)


@dataclass(frozen=True)
class PageRequest:
    """A client's page request: the cursor it got (if any) and the page size."""

    cursor: str | None = None
    limit: int = DEFAULT_PAGE_SIZE


async def fetch_page(
    session: AsyncSession,
    statement: Select[_Row],
    model: type[_Row],
    page: PageRequest,
    codec: CursorCodec,
    tenant_id: uuid.UUID,
    fingerprint: str,
) -> tuple[list[_Row], str | None]:
    """Run `statement` as one newest-first page; return its rows and the next page's cursor."""
    # A cursor continues one listing: the same filters *of the same resource*.
    fingerprint = f"{model.__name__}:{fingerprint}"
    position = codec.decode(page.cursor, tenant_id, fingerprint) if page.cursor else None
    # Every table has (created_at, id) from Base, and an index on (tenant_id, created_at, id).
    created_at, row_id = model.created_at, model.id
    statement = statement.order_by(created_at.desc(), row_id.desc())
    if position is not None:
        # Strictly older than the last row seen; the row comparison walks the tenant index.
        statement = statement.where(
            tuple_(created_at, row_id) < tuple_(position.created_at, position.id)
        )
    statement = statement.limit(page.limit + 1)
    rows = list((await session.execute(statement)).scalars())
    if len(rows) <= page.limit:
        return rows, None
    rows = rows[: page.limit]
    last = rows[-1]
    return rows, codec.encode(Position(last.created_at, last.id), tenant_id, fingerprint)
