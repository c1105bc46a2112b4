"""The audit log records the client's address: from a trusted proxy's header, never a spoofed one.

Railway's edge connects from 100.64.0.0/10 and passes the client in X-Real-IP; other proxies
append to X-Forwarded-For. The app believes either only from a peer in TRUSTED_PROXIES.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest

from app.core.config import ClientIpHeader, Settings
from app.database import Database
from app.main import create_app
from tests.test_api.conftest import API, Api, Tenants, document_body

RAILWAY_EDGE = "100.64.12.34"
CLIENT = "203.0.113.9"
SPOOFED = "6.6.6.6"

ClientFrom = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def client_from(settings: Settings, database: Database) -> ClientFrom:
    """`async with client_from(peer, **settings) as http:` the app, reached from `peer`."""

    @asynccontextmanager
    async def connect(peer: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        # model_copy skips validation: overrides are given as the validated types.
        app = create_app(settings.model_copy(update=overrides), database)
        transport = httpx.ASGITransport(app=app, client=(peer, 40123))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http

    return connect


async def _audited_address(
    http: httpx.AsyncClient, api: Api, tenants: Tenants, headers: dict[str, str]
) -> str:
    response = await http.post(
        f"{API}/documents", json=document_body(), headers={**tenants.admin.headers, **headers}
    )
    assert response.status_code == 201, response.text
    [row] = await api.audit_rows(
        tenants.admin.tenant.id, resource_id=uuid.UUID(response.json()["id"])
    )
    return str(row.ip_address)


async def test_behind_railways_edge_the_audit_row_has_the_clients_address(
    client_from: ClientFrom, api: Api, tenants: Tenants
) -> None:
    async with client_from(
        RAILWAY_EDGE, TRUSTED_PROXIES=["100.64.0.0/10"], CLIENT_IP_HEADER=ClientIpHeader.X_REAL_IP
    ) as http:
        # Railway appends its own (rotating) edge hop to X-Forwarded-For; X-Real-IP is the client.
        headers = {"X-Real-IP": CLIENT, "X-Forwarded-For": f"{CLIENT}, 152.233.33.161"}
        assert await _audited_address(http, api, tenants, headers) == CLIENT


async def test_behind_an_appending_proxy_the_audit_row_has_the_clients_address(
    client_from: ClientFrom, api: Api, tenants: Tenants
) -> None:
    async with client_from("10.0.0.7", TRUSTED_PROXIES=["10.0.0.0/8"]) as http:
        # The client typed the first entry; the trusted proxy appended the address it saw.
        headers = {"X-Forwarded-For": f"{SPOOFED}, {CLIENT}"}
        assert await _audited_address(http, api, tenants, headers) == CLIENT


@pytest.mark.parametrize("header", ["X-Forwarded-For", "X-Real-IP"])
async def test_a_spoofed_header_from_an_untrusted_peer_is_ignored(
    client_from: ClientFrom, api: Api, tenants: Tenants, header: str
) -> None:
    direct_caller = "198.51.100.20"
    async with client_from(
        direct_caller, TRUSTED_PROXIES=["100.64.0.0/10"], CLIENT_IP_HEADER=ClientIpHeader(header)
    ) as http:
        spoofed = {"X-Forwarded-For": SPOOFED, "X-Real-IP": SPOOFED}
        assert await _audited_address(http, api, tenants, spoofed) == direct_caller


async def test_without_trusted_proxies_no_header_is_believed_even_from_loopback(
    client_from: ClientFrom, api: Api, tenants: Tenants
) -> None:
    async with client_from("127.0.0.1") as http:
        spoofed = {"X-Forwarded-For": SPOOFED, "X-Real-IP": SPOOFED}
        assert await _audited_address(http, api, tenants, spoofed) == "127.0.0.1"


async def test_a_trusted_proxys_malformed_header_keeps_the_peers_address(
    client_from: ClientFrom, api: Api, tenants: Tenants
) -> None:
    async with client_from(
        RAILWAY_EDGE, TRUSTED_PROXIES=["100.64.0.0/10"], CLIENT_IP_HEADER=ClientIpHeader.X_REAL_IP
    ) as http:
        headers = {"X-Real-IP": "not-an-address"}
        assert await _audited_address(http, api, tenants, headers) == RAILWAY_EDGE
