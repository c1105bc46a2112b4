"""Bearer tokens over HTTP: good tokens reach the right tenant; every bad one is a 401 or 403.

The app trusts the test issuer, whose discovery document and JWKS are served over real HTTP
on 127.0.0.1 (`issuer_server`). Every 401 is also checked to open no database transaction.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.base import utcnow
from app.database.session import admin_transaction
from app.models import Tenant, User
from tests.auth_helpers import (
    AuthenticatedCaller,
    IssuerServer,
    TestIssuer,
    bearer,
    new_ec_key,
    new_rsa_key,
    public_jwk,
)
from tests.conftest import MakeCaller
from tests.test_auth.conftest import (
    TransactionCounter,
    assert_unauthorized,
    error_without_request_id,
)

ME = "/api/v1/me"


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
async def caller(make_caller: MakeCaller) -> AuthenticatedCaller:
    """A member of a fresh tenant."""
    return await make_caller(full_name="Ada Member")


async def test_valid_token_reaches_the_callers_tenant(
    client: httpx.AsyncClient, caller: AuthenticatedCaller, make_caller: MakeCaller
) -> None:
    await make_caller()  # a second tenant is present, so a leak would show
    response = await client.get(ME, headers=caller.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenant"] == {
        "id": str(caller.tenant.id),
        "name": caller.tenant.name,
        "status": "active",
    }
    assert body["user"] == {
        "id": str(caller.user.id),
        "email": caller.user.email,
        "full_name": "Ada Member",
        "role": "member",
    }


async def test_es256_tokens_are_accepted(
    client: httpx.AsyncClient, caller: AuthenticatedCaller, test_issuer: TestIssuer
) -> None:
    headers = test_issuer.headers_for(caller.user, algorithm="ES256")
    response = await client.get(ME, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["user"]["id"] == str(caller.user.id)


async def test_missing_token_is_401_missing_without_a_transaction(
    client: httpx.AsyncClient, runtime_transactions: TransactionCounter
) -> None:
    response = await client.get(ME)
    assert_unauthorized(response, "missing")
    assert response.headers["www-authenticate"] == "Bearer"
    assert runtime_transactions.count == 0


async def test_expired_token_is_401_expired(
    client: httpx.AsyncClient,
    caller: AuthenticatedCaller,
    test_issuer: TestIssuer,
    runtime_transactions: TransactionCounter,
) -> None:
    long_ago = int(time.time()) - 3600
    headers = test_issuer.headers_for(caller.user, iat=long_ago, nbf=long_ago, exp=long_ago + 60)
    response = await client.get(ME, headers=headers)
    assert_unauthorized(response, "expired")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert runtime_transactions.count == 0


async def test_expiry_within_leeway_is_accepted(
    client: httpx.AsyncClient, caller: AuthenticatedCaller, test_issuer: TestIssuer
) -> None:
    # Clocks drift: a token that expired 5 s ago is inside the 30 s leeway.
    headers = test_issuer.headers_for(caller.user, exp=int(time.time()) - 5)
    response = await client.get(ME, headers=headers)
    assert response.status_code == 200, response.text


@functools.cache
def _attacker_rsa_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


def _bad_tokens(issuer: TestIssuer, user: User) -> dict[str, str]:
    """Tokens for `user` that must all be refused, each for one reason."""
    subject = str(user.external_idp_id)
    tenant_id = user.tenant_id
    now = int(time.time())
    good = issuer.claims(tenant_id=tenant_id, subject=subject)
    public_pem = issuer.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = _b64({"alg": "HS256", "typ": "JWT", "kid": issuer.rsa_kid})
    hs_body = _b64(good)
    hs_signature = hmac.new(public_pem, f"{hs_header}.{hs_body}".encode(), hashlib.sha256)
    attacker_key = _attacker_rsa_key()
    other_tenant = issuer.claims(tenant_id=uuid.uuid4(), subject=subject)
    return {
        "another key, same kid": issuer.sign(good, key=attacker_key),
        "another key, tampered tenant": issuer.sign(other_tenant, key=attacker_key),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}.",
        "alg none with kid": f"{_b64({'alg': 'none', 'kid': issuer.rsa_kid})}.{_b64(good)}.",
        "HS256 with the public key as secret": (
            f"{hs_header}.{hs_body}.{_b64(hs_signature.digest())}"
        ),
        "RS384": issuer.sign(good, algorithm="RS384", key=issuer.rsa_key, kid=issuer.rsa_kid),
        "RS256 header on the EC key's kid": issuer.sign(
            good, algorithm="RS256", key=issuer.rsa_key, kid=issuer.ec_kid
        ),
        "wrong audience": issuer.mint(tenant_id=tenant_id, subject=subject, aud="another-app"),
        "audience list without us": issuer.mint(
            tenant_id=tenant_id, subject=subject, aud=["another-app", "third-app"]
        ),
        "wrong issuer": issuer.mint(tenant_id=tenant_id, subject=subject, iss="https://evil.test"),
        "issuer prefix": issuer.mint(tenant_id=tenant_id, subject=subject, iss=issuer.url[:-1]),
        "nbf in the future": issuer.mint(tenant_id=tenant_id, subject=subject, nbf=now + 600),
        "no exp": issuer.mint(tenant_id=tenant_id, subject=subject, exp=None),
        "no aud": issuer.mint(tenant_id=tenant_id, subject=subject, aud=None),
        "no sub": issuer.mint(tenant_id=tenant_id, subject=subject, sub=None),
        "empty sub": issuer.mint(tenant_id=tenant_id, subject=""),
        "unknown kid": issuer.sign(good, kid="no-such-key"),
        "path-like kid": issuer.sign(good, kid="../../../../etc/passwd"),
        "SQL-like kid": issuer.sign(good, kid="x' OR '1'='1' --"),
        "huge kid": issuer.sign(good, kid="k" * 5000),
        "no kid": issuer.sign(good, with_kid=False),
        "tenant claim missing": issuer.sign({k: v for k, v in good.items() if k != "tenant_id"}),
        "tenant claim not a UUID": issuer.mint(tenant_id="not-a-uuid", subject=subject),
        "tenant claim in braces": issuer.mint(tenant_id=f"{{{tenant_id}}}", subject=subject),
        # A regex `$` matches before a final newline: the check must match the whole claim.
        "tenant claim with a trailing newline": issuer.mint(
            tenant_id=f"{tenant_id}\n", subject=subject
        ),
        "tenant claim with a leading newline": issuer.mint(
            tenant_id=f"\n{tenant_id}", subject=subject
        ),
        "tenant claim with a trailing CRLF": issuer.mint(
            tenant_id=f"{tenant_id}\r\n", subject=subject
        ),
        "tenant claim an array": issuer.sign({**good, "tenant_id": [str(tenant_id)]}),
        "tenant claim an object": issuer.sign({**good, "tenant_id": {"id": str(tenant_id)}}),
        "tenant claim a number": issuer.sign({**good, "tenant_id": 42}),
        "not a JWT": "not-a-jwt",
        "two segments": f"{_b64({'alg': 'RS256'})}.{_b64(good)}",
        "garbage segments": "a.b.c",
        "truncated signature": issuer.mint(tenant_id=tenant_id, subject=subject)[:-10],
    }


BAD_TOKEN_CASES = [
    "another key, same kid",
    "another key, tampered tenant",
    "alg none",
    "alg none with kid",
    "HS256 with the public key as secret",
    "RS384",
    "RS256 header on the EC key's kid",
    "wrong audience",
    "audience list without us",
    "wrong issuer",
    "issuer prefix",
    "nbf in the future",
    "no exp",
    "no aud",
    "no sub",
    "empty sub",
    "unknown kid",
    "path-like kid",
    "SQL-like kid",
    "huge kid",
    "no kid",
    "tenant claim missing",
    "tenant claim not a UUID",
    "tenant claim in braces",
    "tenant claim with a trailing newline",
    "tenant claim with a leading newline",
    "tenant claim with a trailing CRLF",
    "tenant claim an array",
    "tenant claim an object",
    "tenant claim a number",
    "not a JWT",
    "two segments",
    "garbage segments",
    "truncated signature",
]


@pytest.mark.parametrize("case", BAD_TOKEN_CASES)
async def test_bad_token_is_401_invalid_without_a_transaction(
    case: str,
    client: httpx.AsyncClient,
    caller: AuthenticatedCaller,
    test_issuer: TestIssuer,
    runtime_transactions: TransactionCounter,
) -> None:
    tokens = _bad_tokens(test_issuer, caller.user)
    assert sorted(tokens) == sorted(BAD_TOKEN_CASES)
    token = tokens[case]
    response = await client.get(ME, headers=bearer(token))
    assert_unauthorized(response, "invalid")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert runtime_transactions.count == 0


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token abc.def.ghi", "bearer"],
)
async def test_malformed_authorization_header_is_401_invalid(
    header: str, client: httpx.AsyncClient, runtime_transactions: TransactionCounter
) -> None:
    response = await client.get(ME, headers={"Authorization": header})
    assert_unauthorized(response, "invalid")
    assert runtime_transactions.count == 0


async def test_bearer_scheme_is_case_insensitive(
    client: httpx.AsyncClient, caller: AuthenticatedCaller
) -> None:
    token = caller.headers["Authorization"].removeprefix("Bearer ")
    response = await client.get(ME, headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200, response.text


async def test_key_headers_in_the_token_are_never_fetched(
    client: httpx.AsyncClient,
    caller: AuthenticatedCaller,
    test_issuer: TestIssuer,
    runtime_transactions: TransactionCounter,
) -> None:
    attacker = IssuerServer().start()
    try:
        attacker_key = attacker.issuer.rsa_key
        claims = test_issuer.claims(
            tenant_id=caller.tenant.id, subject=str(caller.user.external_idp_id)
        )
        attacker_jwk = public_jwk(attacker_key, "attacker-key")
        tokens = [
            test_issuer.sign(
                claims,
                key=attacker_key,
                kid="attacker-key",
                headers={"jku": attacker.url + "/jwks.json"},
            ),
            test_issuer.sign(
                claims,
                key=attacker_key,
                kid="attacker-key",
                headers={"x5u": attacker.url + "/cert.pem"},
            ),
            test_issuer.sign(
                claims, key=attacker_key, kid="attacker-key", headers={"jwk": attacker_jwk}
            ),
            # The issuer's own kid, with the attacker's key embedded: the embedded key is ignored.
            test_issuer.sign(
                claims, key=attacker_key, kid=test_issuer.rsa_kid, headers={"jwk": attacker_jwk}
            ),
        ]
        for token in tokens:
            response = await client.get(ME, headers=bearer(token))
            assert_unauthorized(response, "invalid")
        assert sum(attacker.hits.values()) == 0
        assert runtime_transactions.count == 0
    finally:
        attacker.stop()


async def test_token_signed_by_another_ec_key_is_401(
    client: httpx.AsyncClient, caller: AuthenticatedCaller, test_issuer: TestIssuer
) -> None:
    claims = test_issuer.claims(
        tenant_id=caller.tenant.id, subject=str(caller.user.external_idp_id)
    )
    token = test_issuer.sign(claims, algorithm="ES256", key=new_ec_key())
    assert_unauthorized(await client.get(ME, headers=bearer(token)), "invalid")


# 403: a valid token whose tenant or user is not (or no longer) allowed in --------------------


async def _change(
    admin_sessions: async_sessionmaker[AsyncSession],
    model: type[Tenant | User],
    row_id: uuid.UUID,
    **values: Any,
) -> None:
    async with admin_transaction(admin_sessions) as session:
        row = await session.get(model, row_id)
        assert row is not None
        for name, value in values.items():
            setattr(row, name, value)


async def test_each_forbidden_case_is_403_with_one_body(
    client: httpx.AsyncClient,
    make_caller: MakeCaller,
    test_issuer: TestIssuer,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    suspended = await make_caller()
    await _change(admin_sessions, Tenant, suspended.tenant.id, status="suspended")
    deleted_tenant = await make_caller()
    await _change(admin_sessions, Tenant, deleted_tenant.tenant.id, deleted_at=utcnow())
    deleted_user = await make_caller()  # deleted after its token was issued
    await _change(admin_sessions, User, deleted_user.user.id, deleted_at=utcnow())
    other = await make_caller()
    stranger = await make_caller()
    cases = {
        "tenant suspended": suspended.headers,
        "tenant soft-deleted": deleted_tenant.headers,
        "user soft-deleted": deleted_user.headers,
        "tenant unknown": bearer(test_issuer.mint(tenant_id=uuid.uuid4(), subject="sub-x")),
        "user unknown": bearer(
            test_issuer.mint(tenant_id=other.tenant.id, subject=f"sub-{uuid.uuid4()}")
        ),
        # A real user's subject, with another (real) tenant in the claim.
        "user of another tenant": bearer(
            test_issuer.mint(tenant_id=other.tenant.id, subject=str(stranger.user.external_idp_id))
        ),
        "system tenant": bearer(
            test_issuer.mint(tenant_id="00000000-0000-0000-0000-000000000000", subject="sub-x")
        ),
    }
    bodies = {}
    for name, headers in cases.items():
        response = await client.get(ME, headers=headers)
        assert response.status_code == 403, (name, response.text)
        assert "www-authenticate" not in response.headers
        bodies[name] = error_without_request_id(response)
    assert len({json.dumps(body, sort_keys=True) for body in bodies.values()}) == 1, bodies
    assert bodies["tenant unknown"]["code"] == "forbidden"


async def test_reactivated_tenant_and_restored_user_get_back_in(
    client: httpx.AsyncClient,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    caller = await make_caller()
    await _change(admin_sessions, Tenant, caller.tenant.id, status="suspended")
    assert (await client.get(ME, headers=caller.headers)).status_code == 403
    await _change(admin_sessions, Tenant, caller.tenant.id, status="active")
    assert (await client.get(ME, headers=caller.headers)).status_code == 200


# The Authorization header itself -----------------------------------------------------------


async def test_oversized_authorization_header_is_431_before_parsing(
    client: httpx.AsyncClient, runtime_transactions: TransactionCounter
) -> None:
    response = await client.get(ME, headers={"Authorization": "Bearer " + "a" * 9000})
    assert response.status_code == 431, response.text
    assert response.json()["error"]["code"] == "header_too_large"
    assert response.headers["x-request-id"]
    assert runtime_transactions.count == 0


async def test_duplicate_authorization_headers_are_400(
    client: httpx.AsyncClient, caller: AuthenticatedCaller, runtime_transactions: TransactionCounter
) -> None:
    value = caller.headers["Authorization"]
    headers = [("Authorization", value), ("Authorization", value)]
    response = await client.get(ME, headers=headers)
    assert response.status_code == 400, response.text
    assert "exactly one Authorization header" in response.json()["error"]["message"]
    assert runtime_transactions.count == 0


async def test_header_guard_applies_to_public_routes_too(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/v1/health/live",
        headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
    )
    assert response.status_code == 400
