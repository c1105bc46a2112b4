"""The issuer's keys: discovered and cached, refetched on rotation, bounded when the IdP is slow.

Most tests run the app against a real HTTP issuer on 127.0.0.1 and count what it serves; the
cache's clock-driven behaviour is tested on `JwksSigningKeys` with an httpx MockTransport.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.auth.jwks import JwksSigningKeys
from app.auth.keys import SigningKeysUnavailableError
from app.auth.tokens import build_token_verifier
from app.core.config import Settings
from app.database import Database
from app.main import create_app
from testkit.auth_helpers import (
    AuthenticatedCaller,
    IssuerServer,
    TestIssuer,
    bearer,
    new_rsa_key,
    public_jwk,
)
from tests.conftest import MakeCaller
from tests.test_auth.conftest import assert_unauthorized

ME = "/api/v1/me"


@pytest.fixture
def own_issuer() -> Iterator[IssuerServer]:
    """An issuer only this test talks to, so its request counts are this test's."""
    server = IssuerServer().start()
    yield server
    server.stop()


def _settings_for(settings: Settings, server: IssuerServer, **overrides: Any) -> Settings:
    return settings.model_copy(
        update={
            "OIDC_ISSUER_URL": server.url,
            "OIDC_CLIENT_ID": server.issuer.audience,
            **overrides,
        }
    )


async def _client(settings: Settings, database: Database, **kwargs: Any) -> httpx.AsyncClient:
    app = create_app(settings, database, **kwargs)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def user_of_own_issuer(
    make_caller: MakeCaller, own_issuer: IssuerServer
) -> AuthenticatedCaller:
    caller = await make_caller()
    return caller._replace(headers=own_issuer.issuer.headers_for(caller.user))


async def test_keys_are_fetched_once_then_served_from_cache(
    settings: Settings,
    database: Database,
    own_issuer: IssuerServer,
    user_of_own_issuer: AuthenticatedCaller,
) -> None:
    async with await _client(_settings_for(settings, own_issuer), database) as client:
        # The first requests arrive together, before any key is cached: one fetch serves all.
        first = await asyncio.gather(
            *(client.get(ME, headers=user_of_own_issuer.headers) for _ in range(10))
        )
        later = [await client.get(ME, headers=user_of_own_issuer.headers) for _ in range(10)]
    assert all(response.status_code == 200 for response in first + later)
    assert own_issuer.hits["/.well-known/openid-configuration"] == 1
    assert own_issuer.jwks_fetches == 1


async def test_unknown_kids_refetch_at_most_once_per_interval(
    settings: Settings,
    database: Database,
    own_issuer: IssuerServer,
    user_of_own_issuer: AuthenticatedCaller,
) -> None:
    issuer = own_issuer.issuer
    claims = issuer.claims(
        tenant_id=user_of_own_issuer.tenant.id,
        subject=str(user_of_own_issuer.user.external_idp_id),
    )
    tuned = _settings_for(settings, own_issuer, OIDC_JWKS_MIN_REFRESH_SECONDS=1.0)
    async with await _client(tuned, database) as client:
        assert (await client.get(ME, headers=user_of_own_issuer.headers)).status_code == 200
        await asyncio.sleep(1.05)  # let the minimum interval since the first fetch pass
        for _ in range(10):
            token = issuer.sign(claims, kid=f"made-up-{uuid.uuid4()}")
            assert_unauthorized(await client.get(ME, headers=bearer(token)), "invalid")
            assert own_issuer.jwks_fetches <= 2
        assert (await client.get(ME, headers=user_of_own_issuer.headers)).status_code == 200
    # The first fetch, then one refetch for the first unknown kid; the other 9 don't refetch
    # (unless the 10 requests outlast the interval, which the bound above would catch).
    assert own_issuer.jwks_fetches == 2


async def test_rotated_keys_are_picked_up_by_one_refetch(
    settings: Settings,
    database: Database,
    own_issuer: IssuerServer,
    user_of_own_issuer: AuthenticatedCaller,
) -> None:
    issuer = own_issuer.issuer
    old_headers = user_of_own_issuer.headers
    tuned = _settings_for(settings, own_issuer, OIDC_JWKS_MIN_REFRESH_SECONDS=0.0)
    async with await _client(tuned, database) as client:
        assert (await client.get(ME, headers=old_headers)).status_code == 200
        new_key = new_rsa_key()
        issuer.published = [public_jwk(new_key, "rotated-1")]
        claims = issuer.claims(
            tenant_id=user_of_own_issuer.tenant.id,
            subject=str(user_of_own_issuer.user.external_idp_id),
        )
        rotated = bearer(issuer.sign(claims, key=new_key, kid="rotated-1"))
        assert (await client.get(ME, headers=rotated)).status_code == 200
        assert own_issuer.jwks_fetches == 2
        assert (await client.get(ME, headers=rotated)).status_code == 200
        assert own_issuer.jwks_fetches == 2  # cached again
        # The retired key is gone from the JWKS, so its tokens no longer pass.
        assert_unauthorized(await client.get(ME, headers=old_headers), "invalid")


async def test_slow_identity_provider_gives_503_not_a_hang(
    settings: Settings,
    database: Database,
    own_issuer: IssuerServer,
    user_of_own_issuer: AuthenticatedCaller,
) -> None:
    own_issuer.delay_seconds = 3.0
    tuned = _settings_for(settings, own_issuer, OIDC_HTTP_TIMEOUT_SECONDS=0.3)
    async with await _client(tuned, database) as client:
        response = await client.get(ME, headers=user_of_own_issuer.headers)
    # Had the timeout not applied, the IdP's answer would have arrived and this would be 200.
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert "identity provider" in response.json()["error"]["message"]


async def test_failing_identity_provider_gives_503_then_recovers(
    settings: Settings,
    database: Database,
    own_issuer: IssuerServer,
    user_of_own_issuer: AuthenticatedCaller,
) -> None:
    own_issuer.fail_with = 500
    tuned = _settings_for(settings, own_issuer, OIDC_JWKS_MIN_REFRESH_SECONDS=0.0)
    async with await _client(tuned, database) as client:
        assert (await client.get(ME, headers=user_of_own_issuer.headers)).status_code == 503
        own_issuer.fail_with = None
        assert (await client.get(ME, headers=user_of_own_issuer.headers)).status_code == 200


# The cache itself, driven by a fake clock over an httpx MockTransport ------------------------

ISSUER = "https://idp.example.test/realms/acme"


class FakeIdP:
    """Answers discovery and JWKS requests in-process; counts them; can be told to fail."""

    def __init__(self, issuer: TestIssuer) -> None:
        self.issuer = issuer
        self.requests: list[str] = []
        self.failing = False
        self.discovery: dict[str, Any] = {"issuer": ISSUER, "jwks_uri": ISSUER + "/certs"}
        self.jwks_body: bytes | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if self.failing:
            return httpx.Response(503)
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json=self.discovery)
        if self.jwks_body is not None:
            return httpx.Response(200, content=self.jwks_body)
        return httpx.Response(200, json=self.issuer.jwks())


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_idp(test_issuer: TestIssuer) -> FakeIdP:
    return FakeIdP(TestIssuer(ISSUER, rsa_key=test_issuer.rsa_key, ec_key=test_issuer.ec_key))


def _keys(idp: FakeIdP, clock: FakeClock) -> JwksSigningKeys:
    return JwksSigningKeys(
        ISSUER,
        cache_seconds=600,
        min_refresh_seconds=30,
        timeout_seconds=1,
        transport=httpx.MockTransport(idp.handle),
        clock=clock,
    )


async def test_cache_expires_after_its_ttl(fake_idp: FakeIdP) -> None:
    clock = FakeClock()
    keys = _keys(fake_idp, clock)
    assert await keys.key_for("test-rsa-1") is not None
    clock.now += 599
    assert await keys.key_for("test-rsa-1") is not None
    assert keys.fetch_count == 1
    clock.now += 2
    assert await keys.key_for("test-rsa-1") is not None
    assert keys.fetch_count == 2
    assert fake_idp.requests[0] == ISSUER + "/.well-known/openid-configuration"


async def test_stale_keys_stay_in_use_while_the_idp_is_down(fake_idp: FakeIdP) -> None:
    clock = FakeClock()
    keys = _keys(fake_idp, clock)
    assert await keys.key_for("test-ec-1") is not None
    fake_idp.failing = True
    clock.now += 700  # past the TTL: a refresh is due, and fails
    assert await keys.key_for("test-ec-1") is not None
    assert keys.fetch_count == 2
    clock.now += 10  # within the minimum interval: no new attempt
    assert await keys.key_for("test-ec-1") is not None
    assert keys.fetch_count == 2
    clock.now += 30
    fake_idp.failing = False
    assert await keys.key_for("test-ec-1") is not None
    assert keys.fetch_count == 3


async def test_no_keys_at_all_is_unavailable_and_retried_soon(fake_idp: FakeIdP) -> None:
    fake_idp.failing = True
    clock = FakeClock()
    keys = _keys(fake_idp, clock)
    with pytest.raises(SigningKeysUnavailableError):
        await keys.key_for("test-rsa-1")
    clock.now += 1  # still failing fast, without asking the IdP again
    with pytest.raises(SigningKeysUnavailableError):
        await keys.key_for("test-rsa-1")
    assert keys.fetch_count == 1
    fake_idp.failing = False
    clock.now += 1.5  # with nothing cached, retried after 2 s rather than the 30 s interval
    assert await keys.key_for("test-rsa-1") is not None
    assert keys.fetch_count == 2


@pytest.mark.parametrize(
    ("discovery", "jwks_body"),
    [
        ({"issuer": "https://evil.example.test", "jwks_uri": ISSUER + "/certs"}, None),
        ({"issuer": ISSUER, "jwks_uri": "http://idp.example.test/certs"}, None),  # not https
        ({"issuer": ISSUER}, None),  # no jwks_uri
        ({"issuer": ISSUER, "jwks_uri": ISSUER + "/certs"}, b"not json"),
        ({"issuer": ISSUER, "jwks_uri": ISSUER + "/certs"}, b'{"keys": "nope"}'),
        ({"issuer": ISSUER, "jwks_uri": ISSUER + "/certs"}, b" " * (600 * 1024) + b"{}"),
    ],
    ids=["issuer mismatch", "plain-http jwks_uri", "no jwks_uri", "not JSON", "bad shape", "huge"],
)
async def test_untrustworthy_documents_are_refused(
    fake_idp: FakeIdP, discovery: dict[str, Any], jwks_body: bytes | None
) -> None:
    fake_idp.discovery = discovery
    fake_idp.jwks_body = jwks_body
    with pytest.raises(SigningKeysUnavailableError):
        await _keys(fake_idp, FakeClock()).key_for("test-rsa-1")


async def test_keys_we_would_never_accept_are_skipped(
    fake_idp: FakeIdP, settings: Settings, database: Database, make_caller: MakeCaller
) -> None:
    caller = await make_caller()
    hmac_jwk = {
        "kty": "oct",
        "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg",
        "kid": "hmac",
        "alg": "HS256",
    }
    encryption_jwk = {**public_jwk(new_rsa_key(), "enc-key"), "use": "enc"}
    p384_jwk = {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"}
    fake_idp.jwks_body = json.dumps(
        {"keys": [hmac_jwk, encryption_jwk, p384_jwk, *fake_idp.issuer.jwks()["keys"]]}
    ).encode()
    tuned = settings.model_copy(
        update={"OIDC_ISSUER_URL": ISSUER, "OIDC_CLIENT_ID": fake_idp.issuer.audience}
    )
    verifier = build_token_verifier(tuned, transport=httpx.MockTransport(fake_idp.handle))
    async with await _client(tuned, database, token_verifier=verifier) as client:
        good = fake_idp.issuer.headers_for(caller.user)
        assert (await client.get(ME, headers=good)).status_code == 200
        claims = fake_idp.issuer.claims(
            tenant_id=caller.tenant.id, subject=str(caller.user.external_idp_id)
        )
        hs = bearer(
            fake_idp.issuer.sign(
                claims, algorithm="HS256", key=b"a-32-byte-secret-for-hmac-sha256", kid="hmac"
            )
        )
        assert_unauthorized(await client.get(ME, headers=hs), "invalid")
        enc = bearer(fake_idp.issuer.sign(claims, kid="enc-key"))
        assert_unauthorized(await client.get(ME, headers=enc), "invalid")
