"""Request parameters shared by the list routes: page size and cursor, JSON query filters."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError

from app.core.config import Settings
from app.schemas.common import check_metadata_filter
from app.services.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, CursorCodec, PageRequest


async def get_settings_from_app(request: Request) -> Settings:
    """The Settings the running app was built with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_cursor_codec(request: Request) -> CursorCodec:
    """The codec that signs and checks pagination cursors (one per app)."""
    codec: CursorCodec | None = getattr(request.app.state, "cursor_codec", None)
    if codec is None:
        settings: Settings = request.app.state.settings
        codec = CursorCodec(settings.cursor_secret)
        request.app.state.cursor_codec = codec
    return codec


async def get_page(
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
) -> PageRequest:
    """The page the client asks for."""
    return PageRequest(cursor=cursor, limit=limit)


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"loc": ("query", field), "msg": message, "type": "value_error", "input": None}]
    )


def metadata_filter(raw: str | None, field: str) -> dict[str, Any] | None:
    """Parse a query parameter holding a metadata filter (422 naming `field` and the limit)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except RecursionError:
        raise _invalid(field, "is nested too deeply") from None
    except ValueError:
        raise _invalid(field, "must be a JSON object") from None
    if not isinstance(value, dict):
        raise _invalid(field, "must be a JSON object")
    try:
        return check_metadata_filter(value)
    except ValueError as exc:
        raise _invalid(field, str(exc)) from None


SettingsDep = Annotated[Settings, Depends(get_settings_from_app)]
CursorCodecDep = Annotated[CursorCodec, Depends(get_cursor_codec)]
PageDep = Annotated[PageRequest, Depends(get_page)]
