"""Tokens already verified by this worker, so a repeat token skips the signature check.

A client sends the same access token on every request until it expires, and checking an
ES256/RS256 signature costs 0.1-0.3 ms of CPU each time (docs/PERFORMANCE.md). The cache holds
what a token proved, keyed by the SHA-256 of the whole token string (signature included, so no
other string can hit the entry), and a hit is accepted only while all of these hold:

- the token has not reached its `exp` (the entry is dropped at `exp` itself, without the
  leeway the full check allows, so a cached token never outlives what verification accepts);
- the signing key that verified it is still the very key object the issuer's key source
  returns for its `kid` (`SigningKeys.key_for`, called on every hit). The JWKS cache refetches
  after OIDC_JWKS_CACHE_SECONDS and builds new key objects, so after a refetch every cached
  token is verified again; a key the IdP has removed stops working at exactly the same moment
  as it would without this cache.

Nothing about the user or tenant is cached here: that is app.services.caller_cache, which is
invalidated by push, so a suspended tenant or deleted user is refused on the next request. A token
that fails verification is never stored. Bounded by MAX_ENTRIES, least recently used evicted
first (an entry is ~0.5 KiB, so the bound is a few MiB per worker).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from jwt import PyJWK

from app.auth.identity import VerifiedIdentity

MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class CachedToken:
    """What a verified token proved, the key that verified it, and when the entry lapses."""

    identity: VerifiedIdentity
    kid: str | None
    key: PyJWK
    expires_at: float


class VerifiedTokenCache:
    """An LRU map from token digest to CachedToken, per worker (see the module docstring)."""

    def __init__(
        self, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, CachedToken] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def digest(token: str) -> bytes:
        """The cache key of a token: SHA-256 of its exact text."""
        return hashlib.sha256(token.encode()).digest()

    def get(self, digest: bytes) -> CachedToken | None:
        """The unexpired entry for `digest`, or None (an expired entry is dropped)."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if self._clock() >= entry.expires_at:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry

    def put(self, digest: bytes, entry: CachedToken) -> None:
        """Remember a verified token until its expiry, evicting the least recently used."""
        if self._clock() >= entry.expires_at:
            return
        self._entries[digest] = entry
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def discard(self, digest: bytes) -> None:
        """Forget one token (its key changed)."""
        self._entries.pop(digest, None)
