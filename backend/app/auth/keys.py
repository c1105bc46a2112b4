"""Signing keys: which algorithms we accept and how a JWK becomes a verification key."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from jwt import PyJWK
from jwt.exceptions import PyJWKError

logger = logging.getLogger(__name__)

# Asymmetric only: `none` and the HS* family (where a public key could be used as the HMAC
# secret) are never accepted, whatever a token's header says.
ALLOWED_ALGORITHMS = ("RS256", "ES256")
_MAX_KID_LENGTH = 256


class SigningKeysUnavailableError(RuntimeError):
    """The issuer's keys could not be obtained (and none are cached)."""


class SigningKeys(Protocol):
    """Where a verifier finds the public key for a token's `kid`."""

    async def key_for(self, kid: str | None) -> PyJWK | None:
        """The key with this `kid` (None: the only key, if there is exactly one), or None."""
        ...


def is_acceptable_kid(kid: object) -> bool:
    """A `kid` we are willing to look up: absent, or a short string."""
    return kid is None or (isinstance(kid, str) and 0 < len(kid) <= _MAX_KID_LENGTH)


def parse_jwk_set(document: Any) -> dict[str | None, PyJWK]:
    """The usable signing keys of a JWK Set, by `kid`; keys we would never accept are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: expected an object with a 'keys' array")
    keys: dict[str | None, PyJWK] = {}
    for entry in document["keys"]:
        key = _signing_key(entry)
        if key is not None:
            keys[entry.get("kid")] = key
    if None in keys and len(keys) > 1:
        # A key without a kid is only usable when it is the only one.
        del keys[None]
    return keys


def _signing_key(entry: Any) -> PyJWK | None:
    if not isinstance(entry, dict) or not is_acceptable_kid(entry.get("kid")):
        return None
    if entry.get("use", "sig") != "sig":
        return None
    kty = entry.get("kty")
    if kty == "RSA":
        algorithm = "RS256"
    elif kty == "EC" and entry.get("crv") == "P-256":
        algorithm = "ES256"
    else:
        return None
    if entry.get("alg", algorithm) != algorithm:
        return None
    try:
        return PyJWK(entry, algorithm=algorithm)
    except PyJWKError as exc:
        logger.warning("skipping unusable JWK", extra={"kid": entry.get("kid"), "error": str(exc)})
        return None


class StaticSigningKeys:
    """A fixed set of keys held in memory (the dev issuer's own key; tests)."""

    def __init__(self, keys: dict[str | None, PyJWK]) -> None:
        self._keys = dict(keys)

    async def key_for(self, kid: str | None) -> PyJWK | None:
        """The key with this `kid`, or the only key when the token names none."""
        return find_key(self._keys, kid)


def find_key(keys: dict[str | None, PyJWK], kid: str | None) -> PyJWK | None:
    """Look `kid` up; a token without a kid matches only a set with exactly one key."""
    if kid is None:
        return next(iter(keys.values())) if len(keys) == 1 else None
    return keys.get(kid)
