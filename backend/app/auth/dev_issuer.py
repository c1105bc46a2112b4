"""The dev issuer: with no OIDC_ISSUER_URL outside production, the app signs its own tokens.

Its EC P-256 key is created once and kept in DEV_ISSUER_KEY_FILE (under the git-ignored
`backend/.data/`, next to the embedded database), so tokens minted by `python -m app
dev-token` are accepted by a running server. The server verifies them with the key in memory
(no HTTP call to itself); the discovery document and JWKS are also served (dev mode only) for
tools that want them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from app.auth.keys import StaticSigningKeys
from app.core.config import Settings, SettingsError
from app.core.secret_files import read_or_create

DEV_ISSUER = "urn:tenant-docs:dev-issuer"
DEV_AUDIENCE = "tenant-docs-dev"
DEV_ALGORITHM = "ES256"
DEV_ROUTE_PREFIX = "/api/v1/dev"
DEFAULT_TOKEN_LIFETIME_SECONDS = 3600


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class DevIssuer:
    """The local issuer: its key, key id and the audience its tokens carry."""

    private_key: ec.EllipticCurvePrivateKey
    audience: str

    @property
    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK (with its RFC 7638 thumbprint as `kid`)."""
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
        canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
        kid = _b64url(hashlib.sha256(canonical).digest())
        return {**required, "kid": kid, "use": "sig", "alg": DEV_ALGORITHM}

    @property
    def kid(self) -> str:
        """The key id tokens name in their header."""
        return str(self.public_jwk["kid"])

    def jwks(self) -> dict[str, Any]:
        """The JWK Set with the one public key."""
        return {"keys": [self.public_jwk]}

    def signing_keys(self) -> StaticSigningKeys:
        """The key, in memory, for the app's token verifier."""
        return StaticSigningKeys({self.kid: jwt.PyJWK(self.public_jwk)})

    def discovery_document(self, base_url: str) -> dict[str, Any]:
        """A minimal OpenID configuration pointing at the served JWKS."""
        return {
            "issuer": DEV_ISSUER,
            "jwks_uri": base_url.rstrip("/") + DEV_ROUTE_PREFIX + "/jwks.json",
            "id_token_signing_alg_values_supported": [DEV_ALGORITHM],
            "subject_types_supported": ["public"],
            "response_types_supported": ["token"],
        }

    def mint(
        self,
        *,
        subject: str,
        tenant_id: uuid.UUID,
        tenant_claim: str,
        lifetime_seconds: int = DEFAULT_TOKEN_LIFETIME_SECONDS,
    ) -> str:
        """A signed access token for `subject` in `tenant_id`."""
        now = int(time.time())
        claims = {
            "iss": DEV_ISSUER,
            "aud": self.audience,
            "sub": subject,
            tenant_claim: str(tenant_id),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_seconds,
        }
        return jwt.encode(
            claims, self.private_key, algorithm=DEV_ALGORITHM, headers={"kid": self.kid}
        )


def dev_issuer_for(settings: Settings) -> DevIssuer:
    """The dev issuer for these settings; refused in production or when an IdP is configured."""
    if settings.is_production:
        raise SettingsError("the dev token issuer is refused when ENVIRONMENT=production")
    if settings.OIDC_ISSUER_URL is not None:
        raise SettingsError(
            "OIDC_ISSUER_URL is set, so the app only accepts that issuer's tokens;"
            " unset it to use dev tokens"
        )
    private_key = load_or_create_key(settings.DEV_ISSUER_KEY_FILE)
    return DevIssuer(private_key=private_key, audience=settings.oidc_audience or DEV_AUDIENCE)


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read the PEM key at `path`, creating it (mode 0600) the first time."""
    key = serialization.load_pem_private_key(read_or_create(path, _new_pem_key), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise SettingsError(f"DEV_ISSUER_KEY_FILE: {path} is not an EC P-256 private key")
    return key


def _new_pem_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
