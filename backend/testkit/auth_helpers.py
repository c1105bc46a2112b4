"""Tokens for tests: a test OIDC issuer served over real HTTP, and authenticated callers.

`IssuerServer` serves an issuer's discovery document and JWKS on 127.0.0.1 (a thread), and
counts the requests it gets. `TestIssuer` holds an RSA and an EC key pair and mints tokens,
good or deliberately bad. `create_caller` provisions a tenant and a user (as app_admin) and
returns the headers that authenticate as that user; the `make_caller` fixture in conftest
binds it to the session's database and issuer:

    tenant, user, headers = await make_caller(role="admin")
    response = await client.get("/api/v1/me", headers=headers)
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import admin_transaction
from app.models import Tenant, User
from testkit.factories import make_tenant, make_user

TEST_AUDIENCE = "tenant-docs-test"
TENANT_CLAIM = "tenant_id"


def new_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh RSA key (2048 bits)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    """The public half of `key` as a JWK with `kid`."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk["alg"] = "RS256"
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk["alg"] = "ES256"
    return {**jwk, "kid": kid, "use": "sig"}


@dataclass
class TestIssuer:
    """An OIDC issuer for tests: its URL, audience, keys, and what its JWKS publishes."""

    __test__ = False  # not a test class, despite the name

    url: str
    audience: str = TEST_AUDIENCE
    rsa_key: rsa.RSAPrivateKey = field(default_factory=new_rsa_key)
    ec_key: ec.EllipticCurvePrivateKey = field(default_factory=new_ec_key)
    rsa_kid: str = "test-rsa-1"
    ec_kid: str = "test-ec-1"
    published: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.published:
            self.published = [
                public_jwk(self.rsa_key, self.rsa_kid),
                public_jwk(self.ec_key, self.ec_kid),
            ]

    def discovery(self) -> dict[str, Any]:
        """The OpenID configuration document."""
        return {"issuer": self.url, "jwks_uri": self.url + "/jwks.json"}

    def jwks(self) -> dict[str, Any]:
        """The JWK Set as served."""
        return {"keys": list(self.published)}

    def claims(
        self, *, tenant_id: uuid.UUID | str, subject: str, **overrides: Any
    ) -> dict[str, Any]:
        """Valid claims for `subject` in `tenant_id`; `overrides` replace (None removes) claims."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": self.audience,
            "sub": subject,
            TENANT_CLAIM: str(tenant_id),
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def sign(
        self,
        claims: dict[str, Any],
        *,
        algorithm: str = "RS256",
        key: Any = None,
        kid: str | None = None,
        headers: dict[str, Any] | None = None,
        with_kid: bool = True,
    ) -> str:
        """Sign `claims`; by default with the published key for `algorithm`, naming its kid."""
        if key is None:
            key = self.rsa_key if algorithm == "RS256" else self.ec_key
        if kid is None:
            kid = self.rsa_kid if algorithm == "RS256" else self.ec_kid
        header = {"kid": kid, **(headers or {})} if with_kid else dict(headers or {})
        return jwt.encode(claims, key, algorithm=algorithm, headers=header)

    def mint(
        self,
        *,
        tenant_id: uuid.UUID | str,
        subject: str,
        algorithm: str = "RS256",
        **overrides: Any,
    ) -> str:
        """A valid token (unless `overrides` make it otherwise)."""
        return self.sign(
            self.claims(tenant_id=tenant_id, subject=subject, **overrides), algorithm=algorithm
        )

    def headers_for(self, user: User, **overrides: Any) -> dict[str, str]:
        """Authorization headers for `user` (its tenant and external_idp_id)."""
        assert user.external_idp_id is not None, "the user needs an external_idp_id to sign in"
        token = self.mint(tenant_id=user.tenant_id, subject=user.external_idp_id, **overrides)
        return bearer(token)


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for `token`."""
    return {"Authorization": f"Bearer {token}"}


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (the slow-IdP test) is expected; don't print a traceback.
        pass


class IssuerServer:
    """Serves a TestIssuer's discovery document and JWKS over HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.delay_seconds = 0.0
        self.fail_with: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] += 1
                if server.delay_seconds:
                    time.sleep(server.delay_seconds)
                documents = {
                    "/.well-known/openid-configuration": server.issuer.discovery(),
                    "/jwks.json": server.issuer.jwks(),
                }
                document = documents.get(self.path)
                status = server.fail_with or (200 if document is not None else 404)
                body = json.dumps(document if status == 200 else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._http = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self.issuer = TestIssuer(self.url)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def start(self) -> IssuerServer:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._http.shutdown()
        self._http.server_close()

    @property
    def jwks_fetches(self) -> int:
        """How many times the JWKS was requested."""
        return self.hits["/jwks.json"]


class AuthenticatedCaller(NamedTuple):
    """A provisioned tenant and user, and headers that authenticate as the user."""

    tenant: Tenant
    user: User
    headers: dict[str, str]


async def create_caller(
    admin_sessions: async_sessionmaker[AsyncSession],
    issuer: TestIssuer,
    *,
    role: str = "member",
    tenant: Tenant | None = None,
    tenant_name: str | None = None,
    email: str | None = None,
    full_name: str | None = None,
) -> AuthenticatedCaller:
    """Provision a user (in a new tenant unless `tenant` is given) and sign a token for them."""
    async with admin_transaction(admin_sessions) as session:
        if tenant is None:
            tenant = await make_tenant(session, name=tenant_name)
        user = await make_user(session, tenant, email=email, role=role, full_name=full_name)
    return AuthenticatedCaller(tenant, user, issuer.headers_for(user))
