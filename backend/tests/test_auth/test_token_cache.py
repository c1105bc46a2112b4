"""The verified-token cache: a repeat token skips the signature check, and nothing more.

A cached token must still lapse at its `exp`, a token that fails verification must never be
stored, a rotated key must force a full check again, and the per-request caller lookup (a
suspended tenant's 403) must still run on a cached token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from jwt import PyJWK
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.keys import StaticSigningKeys
from app.auth.token_cache import VerifiedTokenCache
from app.auth.tokens import TokenVerifier
from app.core.config import Settings
from app.core.errors import UnauthorizedError
from app.database import Database
from app.database.session import admin_transaction
from app.main import create_app
from app.models import Tenant
from testkit.auth_helpers import TENANT_CLAIM, TestIssuer, bearer, new_rsa_key, public_jwk
from tests.conftest import MakeCaller

ME = "/api/v1/me"
TENANT = "0b7e2a4c-8f1d-4c55-9a43-3f6f0c2d9e11"


class _RotatingKeys:
    """A key source whose key for a kid can be replaced, as a JWKS refetch would."""

    def __init__(self, keys: dict[str | None, PyJWK]) -> None:
        self.keys = dict(keys)
        self.calls = 0

    async def key_for(self, kid: str | None) -> PyJWK | None:
        self.calls += 1
        return self.keys.get(kid)


def _jwk(issuer: TestIssuer) -> PyJWK:
    return PyJWK(public_jwk(issuer.rsa_key, issuer.rsa_kid), algorithm="RS256")


def _verifier(issuer: TestIssuer, keys: Any, *, leeway: float = 0) -> TokenVerifier:
    return TokenVerifier(
        keys,
        issuer=issuer.url,
        audience=issuer.audience,
        tenant_claim=TENANT_CLAIM,
        leeway_seconds=leeway,
        cache=VerifiedTokenCache(max_entries=3),
    )


class _CountingVerifier(TokenVerifier):
    """Counts full signature checks."""

    decodes = 0

    def _decode(self, token: str, key: PyJWK, algorithm: str) -> dict[str, Any]:
        self.decodes += 1
        return super()._decode(token, key, algorithm)


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer(url="https://issuer.test")


async def test_a_repeat_token_skips_the_signature_check_until_exp(issuer: TestIssuer) -> None:
    verifier = _CountingVerifier(
        StaticSigningKeys({issuer.rsa_kid: _jwk(issuer)}),
        issuer=issuer.url,
        audience=issuer.audience,
        tenant_claim=TENANT_CLAIM,
        leeway_seconds=0,
    )
    expires = int(time.time()) + 2
    token = issuer.mint(tenant_id=TENANT, subject="sub-1", exp=expires)
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert first == second
    assert verifier.decodes == 1, "the second request should have been answered from the cache"
    # Past exp the cached entry is gone and the full check refuses the token.
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.2)
    with pytest.raises(UnauthorizedError) as refused:
        await verifier.verify(token)
    assert refused.value.reason == "expired"
    assert verifier.decodes == 2
    assert len(verifier.cache) == 0


async def test_a_cached_entry_never_outlives_exp_even_with_leeway(issuer: TestIssuer) -> None:
    now = time.time()
    cache = VerifiedTokenCache(clock=lambda: now)
    verifier = _verifier(issuer, StaticSigningKeys({issuer.rsa_kid: _jwk(issuer)}), leeway=60)
    verifier.cache = cache
    expires = int(now) + 30
    token = issuer.mint(tenant_id=TENANT, subject="sub-1", exp=expires)
    await verifier.verify(token)
    entry = cache.get(cache.digest(token))
    assert entry is not None
    assert entry.expires_at == expires
    now = expires  # the clock reaches exp: the entry is dropped
    assert cache.get(cache.digest(token)) is None
    assert len(cache) == 0


async def test_tokens_that_fail_verification_are_never_cached(issuer: TestIssuer) -> None:
    verifier = _verifier(issuer, StaticSigningKeys({issuer.rsa_kid: _jwk(issuer)}))
    now = int(time.time())
    bad_tokens = {
        # Signed with a key the issuer doesn't publish, under the published key's kid.
        "signature": issuer.sign(
            issuer.claims(tenant_id=TENANT, subject="sub-1"), key=new_rsa_key()
        ),
        "expired": issuer.mint(tenant_id=TENANT, subject="sub-1", iat=now - 600, exp=now - 300),
        "audience": issuer.mint(tenant_id=TENANT, subject="sub-1", aud="someone-else"),
        "not yet valid": issuer.mint(tenant_id=TENANT, subject="sub-1", nbf=now + 300),
        "tenant claim": issuer.mint(tenant_id="not-a-uuid", subject="sub-1"),
    }
    for name, token in bad_tokens.items():
        for _attempt in range(2):  # refused every time, not only the first
            with pytest.raises(UnauthorizedError):
                await verifier.verify(token)
        assert len(verifier.cache) == 0, name


async def test_a_replaced_signing_key_forces_a_full_check(issuer: TestIssuer) -> None:
    keys = _RotatingKeys({issuer.rsa_kid: _jwk(issuer)})
    verifier = _verifier(issuer, keys)
    token = issuer.mint(tenant_id=TENANT, subject="sub-1")
    await verifier.verify(token)
    await verifier.verify(token)
    assert keys.calls == 2, "a cache hit must still ask the key source for the current key"
    # The IdP now publishes other material under the same kid (a JWKS refetch): the cached
    # token was signed by a key that is no longer published, so it must be refused.
    keys.keys[issuer.rsa_kid] = PyJWK(public_jwk(new_rsa_key(), issuer.rsa_kid), "RS256")
    with pytest.raises(UnauthorizedError):
        await verifier.verify(token)
    # And a removed key: refused too.
    keys.keys.clear()
    with pytest.raises(UnauthorizedError):
        await verifier.verify(token)
    assert len(verifier.cache) == 0


async def test_the_cache_is_bounded_least_recently_used_first(issuer: TestIssuer) -> None:
    verifier = _verifier(issuer, StaticSigningKeys({issuer.rsa_kid: _jwk(issuer)}))
    tokens = [issuer.mint(tenant_id=TENANT, subject=f"sub-{n}") for n in range(5)]
    for token in tokens:
        await verifier.verify(token)
    assert len(verifier.cache) == 3  # max_entries
    digests = [verifier.cache.digest(token) for token in tokens]
    assert [verifier.cache.get(digest) is not None for digest in digests] == [
        False,
        False,
        True,
        True,
        True,
    ]


@pytest.fixture
async def app_client(
    settings: Settings, database: Database
) -> AsyncIterator[tuple[httpx.AsyncClient, TokenVerifier]]:
    app = create_app(settings, database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http, app.state.token_verifier


async def test_a_cached_token_of_a_suspended_tenant_is_refused_at_once(
    app_client: tuple[httpx.AsyncClient, TokenVerifier],
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    client, verifier = app_client
    caller = await make_caller()
    assert (await client.get(ME, headers=caller.headers)).status_code == 200
    token = caller.headers["Authorization"].removeprefix("Bearer ")
    assert verifier.cache.get(verifier.cache.digest(token)) is not None, "not cached"
    async with admin_transaction(admin_sessions) as session:
        tenant = await session.get(Tenant, caller.tenant.id)
        assert tenant is not None
        tenant.status = "suspended"
    response = await client.get(ME, headers=bearer(token))
    assert response.status_code == 403, response.text
    assert verifier.cache.get(verifier.cache.digest(token)) is not None, "answered from cache"
