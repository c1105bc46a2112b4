"""Verifying a bearer token: signature, algorithm, issuer, audience, lifetime and our claims."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from app.auth.dev_issuer import DEV_ISSUER, DevIssuer
from app.auth.jwks import JwksSigningKeys
from app.auth.keys import (
    ALLOWED_ALGORITHMS,
    SigningKeys,
    SigningKeysUnavailableError,
    is_acceptable_kid,
)
from app.auth.token_cache import CachedToken, VerifiedTokenCache
from app.core.config import Settings, SettingsError
from app.core.errors import ServiceUnavailableError, UnauthorizedError

_MAX_SUBJECT_LENGTH = 255
# The canonical textual form only; uuid.UUID() would also take braces, "urn:uuid:" and no dashes.
# Always used with fullmatch(): `$` would also match before a final newline.
_UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


@dataclass(frozen=True)
class VerifiedIdentity:
    """What a valid token proves: who (the IdP subject) and in which tenant."""

    tenant_id: uuid.UUID
    subject: str


def invalid(message: str) -> UnauthorizedError:
    """A 401 for a token that is malformed, badly signed or fails a claim check."""
    return UnauthorizedError(message, reason="invalid")


class TokenVerifier:
    """Checks tokens of one issuer; no network call once the issuer's keys are cached."""

    def __init__(
        self,
        keys: SigningKeys,
        *,
        issuer: str,
        audience: str,
        tenant_claim: str,
        leeway_seconds: float,
        cache: VerifiedTokenCache | None = None,
    ) -> None:
        self.keys = keys
        self.cache = cache if cache is not None else VerifiedTokenCache()
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim
        self.leeway_seconds = leeway_seconds

    async def verify(self, token: str) -> VerifiedIdentity:
        """The identity a token proves, or UnauthorizedError (reason expired or invalid).

        A token this verifier accepted before is answered from its cache (app.auth.token_cache)
        while it is unexpired and its signing key is still the issuer's current one.
        """
        digest = self.cache.digest(token)
        cached = self.cache.get(digest)
        if cached is not None:
            if await self._current_key(cached.kid) is cached.key:
                return cached.identity
            self.cache.discard(digest)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise invalid("the bearer token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise invalid(
                f"the token's algorithm is not accepted (use {' or '.join(ALLOWED_ALGORITHMS)})"
            )
        kid = header.get("kid")
        if not is_acceptable_kid(kid):
            raise invalid("the token's key id (kid) is malformed")
        # Only the issuer's own keys count: jku, x5u and jwk headers are never looked at.
        key = await self._current_key(kid)
        if key is None:
            raise invalid("the token is signed with a key the issuer does not publish")
        if key.algorithm_name != algorithm:
            raise invalid("the token's algorithm does not match its signing key")
        claims = self._decode(token, key, algorithm)
        identity = VerifiedIdentity(tenant_id=self._tenant_id(claims), subject=_subject(claims))
        # `exp` is required and checked by _decode; cached until it, not until exp + leeway.
        self.cache.put(
            digest,
            CachedToken(identity=identity, kid=kid, key=key, expires_at=float(claims["exp"])),
        )
        return identity

    async def _current_key(self, kid: str | None) -> PyJWK | None:
        try:
            return await self.keys.key_for(kid)
        except SigningKeysUnavailableError:
            raise ServiceUnavailableError(
                "cannot verify tokens now: the identity provider's keys are unavailable",
                headers={"Retry-After": "5"},
            ) from None

    def _decode(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("the bearer token has expired", reason="expired") from None
        except jwt.InvalidSignatureError:
            raise invalid("the token's signature is invalid") from None
        except jwt.InvalidAudienceError:
            raise invalid("the token was issued for another audience") from None
        except jwt.InvalidIssuerError:
            raise invalid("the token was issued by another issuer") from None
        except jwt.ImmatureSignatureError:
            raise invalid("the token is not valid yet (nbf)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise invalid(f"the token has no '{exc.claim}' claim") from None
        except jwt.InvalidTokenError:
            raise invalid("the bearer token is invalid") from None

    def _tenant_id(self, claims: dict[str, Any]) -> uuid.UUID:
        value = claims.get(self.tenant_claim)
        if value is None:
            raise invalid(f"the token has no '{self.tenant_claim}' claim naming the tenant")
        if not isinstance(value, str) or not _UUID_TEXT.fullmatch(value):
            raise invalid(f"the token's '{self.tenant_claim}' claim is not a UUID")
        return uuid.UUID(value)


def _subject(claims: dict[str, Any]) -> str:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= _MAX_SUBJECT_LENGTH:
        raise invalid("the token's 'sub' claim is not a usable subject")
    return subject


def build_token_verifier(
    settings: Settings,
    *,
    dev_issuer: DevIssuer | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> TokenVerifier:
    """The verifier for the configured issuer, or for the dev issuer when one is given."""
    if settings.OIDC_ISSUER_URL is None:
        if dev_issuer is None:
            raise SettingsError("OIDC_ISSUER_URL: required (no dev issuer in this process)")
        return TokenVerifier(
            dev_issuer.signing_keys(),
            issuer=DEV_ISSUER,
            audience=dev_issuer.audience,
            tenant_claim=settings.OIDC_TENANT_CLAIM,
            leeway_seconds=settings.OIDC_LEEWAY_SECONDS,
        )
    audience = settings.oidc_audience
    if audience is None:  # the Settings validator already refuses this
        raise SettingsError("OIDC_CLIENT_ID: required when OIDC_ISSUER_URL is set")
    keys = JwksSigningKeys(
        settings.OIDC_ISSUER_URL,
        cache_seconds=settings.OIDC_JWKS_CACHE_SECONDS,
        min_refresh_seconds=settings.OIDC_JWKS_MIN_REFRESH_SECONDS,
        timeout_seconds=settings.OIDC_HTTP_TIMEOUT_SECONDS,
        transport=transport,
    )
    return TokenVerifier(
        keys,
        issuer=settings.OIDC_ISSUER_URL,
        audience=audience,
        tenant_claim=settings.OIDC_TENANT_CLAIM,
        leeway_seconds=settings.OIDC_LEEWAY_SECONDS,
    )
