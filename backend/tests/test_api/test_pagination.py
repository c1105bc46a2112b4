"""Cursor pagination: stable under inserts, ties broken by id, cursors signed and bound."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from app.core import config
from app.core.config import Settings, load_settings
from app.database.session import admin_transaction
from app.models import Document
from app.schemas import document as schemas
from app.schemas.common import page_of
from app.services import documents as documents_service
from testkit.factories import make_document
from tests.test_api.conftest import API, Api, Tenants

DOCS = f"{API}/documents"
LISTINGS = [f"{API}/documents", f"{API}/users", f"{API}/audit-logs"]


async def _page(
    api: Api, tenants: Tenants, path: str = DOCS, **params: Any
) -> tuple[list[str], str | None]:
    response = await api.client.get(path, params=params, headers=tenants.admin.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    return [item["id"] for item in body["items"]], body["next_cursor"]


async def test_pages_neither_skip_nor_repeat_while_rows_are_inserted(
    api: Api, tenants: Tenants
) -> None:
    originals = [(await api.create_document(tenants.admin))["id"] for _ in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        ids, cursor = await _page(api, tenants, **params)
        seen.extend(ids)
        pages += 1
        # Between page fetches, both tenants keep adding documents.
        await api.create_document(tenants.admin)
        await api.create_document(tenants.other)
        if cursor is None:
            break
    assert seen == list(reversed(originals))
    assert pages == 3


async def test_rows_with_the_same_creation_time_are_ordered_by_id(
    api: Api, tenants: Tenants, admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    # One transaction: now() is the same for every row, so only the id breaks the ties.
    async with admin_transaction(admin_sessions) as session:
        rows = [await make_document(session, tenants.admin.user) for _ in range(5)]
    expected = sorted((str(row.id) for row in rows), reverse=True)
    assert len({row.created_at for row in rows}) == 1
    walked = [item["id"] for item in await api.all_pages(DOCS, tenants.admin, {"limit": 2})]
    assert walked == expected


@pytest.mark.parametrize("path", LISTINGS)
async def test_every_listing_walks_its_rows_once_newest_first(
    api: Api, tenants: Tenants, path: str
) -> None:
    for _ in range(4):
        await api.create_document(tenants.admin)
    everything = await api.all_pages(path, tenants.admin, {"limit": 200})
    walked = await api.all_pages(path, tenants.admin, {"limit": 1})
    assert walked == everything
    assert len({item["id"] for item in walked}) == len(walked) >= 2
    stamps = [item["created_at"] for item in walked]
    assert stamps == sorted(stamps, reverse=True)


async def test_cursors_are_signed_and_bound_to_tenant_and_query(api: Api, tenants: Tenants) -> None:
    for _ in range(3):
        await api.create_document(tenants.admin)
        await api.create_document(tenants.other)
    ids, cursor = await _page(api, tenants, limit=1)
    assert cursor is not None
    assert ids[0] not in cursor  # opaque: not the id in plain text
    # The cursor continues the same query for the same tenant.
    continued, _ = await _page(api, tenants, limit=1, cursor=cursor)
    assert continued != ids

    other_response = await api.client.get(DOCS, params={"limit": 1}, headers=tenants.other.headers)
    other_cursor = other_response.json()["next_cursor"]
    assert other_cursor is not None
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    flipped = bytearray(raw)
    flipped[5] ^= 0x01
    forged_payload = json.dumps(json.loads(raw[:-16])).encode() + raw[-16:]
    users_cursor = (
        await api.client.get(f"{API}/users", params={"limit": 1}, headers=tenants.admin.headers)
    ).json()["next_cursor"]
    assert users_cursor is not None

    refused: dict[str, tuple[str, dict[str, Any]]] = {
        "tampered": (DOCS, {"cursor": base64.urlsafe_b64encode(bytes(flipped)).decode()}),
        "re-encoded payload": (DOCS, {"cursor": base64.urlsafe_b64encode(forged_payload).decode()}),
        "truncated": (DOCS, {"cursor": cursor[:-4]}),
        "another tenant's": (DOCS, {"cursor": other_cursor}),
        "another query's": (DOCS, {"cursor": cursor, "status": "processing"}),
        "another listing's": (DOCS, {"cursor": users_cursor}),
        "a listing's on another": (f"{API}/audit-logs", {"cursor": cursor}),
        "garbage base64": (DOCS, {"cursor": base64.urlsafe_b64encode(b"x" * 40).decode()}),
        "not base64": (DOCS, {"cursor": "%%%not base64%%%"}),
        "too long": (DOCS, {"cursor": "A" * 513}),
        "empty-ish": (DOCS, {"cursor": "A"}),
    }
    before = await api.counts()
    for name, (path, params) in refused.items():
        response = await api.client.get(path, params=params, headers=tenants.admin.headers)
        assert response.status_code == 422, (name, response.text)
        assert "cursor" in response.json()["error"]["message"], name
    assert await api.counts() == before


@pytest.mark.parametrize("path", LISTINGS)
@pytest.mark.parametrize("limit", ["0", "201", "-1", "ten", "1.5"])
async def test_page_size_outside_one_to_two_hundred_is_refused(
    api: Api, tenants: Tenants, path: str, limit: str
) -> None:
    response = await api.client.get(path, params={"limit": limit}, headers=tenants.admin.headers)
    assert response.status_code == 422, response.text
    assert "limit" in response.json()["error"]["message"]


def _signed(secret: bytes, position: Any) -> str:
    """A cursor signed with the app's own secret around any payload (a forger who knows it)."""
    payload = json.dumps(position).encode()
    signature = hmac.new(secret, payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(payload + signature).decode().rstrip("=")


async def test_a_signed_cursor_with_a_malformed_position_is_422_not_500(
    api: Api, tenants: Tenants, settings: Settings
) -> None:
    tenant = str(tenants.admin.tenant.id)
    fingerprint = f"Document:{documents_service.DocumentQuery().fingerprint()}"
    row_id = str(uuid.uuid4())
    created = "2026-11-30T12:00:00+00:00"
    # The well-formed one proves the forged cursors reach the position check.
    well_formed = _signed(settings.cursor_secret, [created, row_id, tenant, fingerprint])
    accepted = await api.client.get(
        DOCS, params={"cursor": well_formed}, headers=tenants.admin.headers
    )
    assert accepted.status_code == 200, accepted.text
    malformed: dict[str, Any] = {
        "not a date": ["yesterday", row_id, tenant, fingerprint],
        "a date without time zone": ["2026-11-30T12:00:00", row_id, tenant, fingerprint],
        "a number for a date": [1764504000, row_id, tenant, fingerprint],
        "not a uuid": [created, "row-1", tenant, fingerprint],
        "a list for a uuid": [created, [row_id], tenant, fingerprint],
        "three parts": [created, row_id, tenant],
        "five parts": [created, row_id, tenant, fingerprint, "more"],
        "an object": {"created_at": created, "id": row_id},
        "a string": "position",
        "null": None,
    }
    for name, position in malformed.items():
        cursor = _signed(settings.cursor_secret, position)
        response = await api.client.get(
            DOCS, params={"cursor": cursor}, headers=tenants.admin.headers
        )
        assert response.status_code == 422, (name, response.text)
        assert "cursor: malformed position" in response.json()["error"]["message"], name


def test_the_dev_cursor_secret_is_made_per_installation(tmp_path: Path) -> None:
    first = load_settings(ENVIRONMENT="development", CURSOR_SECRET_FILE=tmp_path / "a" / "key")
    second = load_settings(ENVIRONMENT="development", CURSOR_SECRET_FILE=tmp_path / "b" / "key")
    secret = first.cursor_secret
    assert len(secret) >= 32
    assert secret == first.cursor_secret  # kept: cursors survive a restart
    assert secret != second.cursor_secret  # another installation, another secret
    assert secret not in Path(config.__file__).read_bytes()
    assert stat.S_IMODE((tmp_path / "a" / "key").stat().st_mode) == 0o600
    configured = load_settings(
        ENVIRONMENT="development", CURSOR_SECRET="set", CURSOR_SECRET_FILE=tmp_path / "c"
    )
    assert configured.cursor_secret == b"set"
    assert not (tmp_path / "c").exists()


async def test_a_page_validated_from_loaded_values_equals_one_validated_row_by_row(
    tenants: Tenants, admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    """page_of reads each row's loaded values; a row missing one is read (and loaded) as before."""
    async with admin_transaction(admin_sessions) as session:
        created = [await make_document(session, tenants.admin.user) for _ in range(3)]
        ids = [row.id for row in created]
    async with admin_transaction(admin_sessions) as session:
        statement = select(Document).where(Document.id.in_(ids)).order_by(Document.id)
        rows = list((await session.execute(statement)).scalars())
        # One row with an attribute expired: it goes in as the row, whose read loads it again.
        session.expire(rows[1], ["filename"])
        assert "filename" not in inspect(rows[1]).dict

        def both_ways(_: Session) -> tuple[str, str]:
            one_call = page_of(schemas.DocumentPage, rows, "next").model_dump_json()
            row_by_row = schemas.DocumentPage(
                items=[schemas.Document.model_validate(row) for row in rows], next_cursor="next"
            ).model_dump_json()
            return one_call, row_by_row

        one_call, row_by_row = await session.run_sync(both_ways)
    assert one_call == row_by_row
    assert [item["id"] for item in json.loads(one_call)["items"]] == sorted(map(str, ids))
