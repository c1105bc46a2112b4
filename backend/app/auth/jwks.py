"""The configured OIDC issuer's signing keys: discovered, fetched with bounded timeouts, cached.

`jwks_uri` comes from `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery
1.0 §4). Keys are cached for OIDC_JWKS_CACHE_SECONDS, so a request never waits on the IdP once
keys are known. A token naming an unknown `kid` (the IdP rotated its keys) triggers one
refetch, but never more often than OIDC_JWKS_MIN_REFRESH_SECONDS: tokens with made-up kids
can't turn us into a flood against the IdP. When a refresh fails, the last good keys stay in
use. Keys are only ever taken from the issuer's own JWKS: `jku`, `x5u` and embedded `jwk`
token headers are ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from jwt import PyJWK

from app.auth.keys import SigningKeysUnavailableError, find_key, parse_jwk_set

logger = logging.getLogger(__name__)

_MAX_DOCUMENT_BYTES = 512 * 1024
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_NO_KEYS_RETRY_SECONDS = 2.0


def discovery_url(issuer_url: str) -> str:
    """Where an issuer publishes its OpenID configuration."""
    return issuer_url.rstrip("/") + "/.well-known/openid-configuration"


class JwksSigningKeys:
    """Keys of one issuer, fetched over HTTP and cached (see the module docstring)."""

    def __init__(
        self,
        issuer_url: str,
        *,
        cache_seconds: float,
        min_refresh_seconds: float,
        timeout_seconds: float,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer_url = issuer_url
        self._cache_seconds = cache_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._timeout_seconds = timeout_seconds
        self._transport = transport
        self._clock = clock
        self._keys: dict[str | None, PyJWK] | None = None
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self.fetch_count = 0

    async def key_for(self, kid: str | None) -> PyJWK | None:
        """The issuer's key for `kid`; fetches only when the cache is stale or lacks the kid."""
        if self._keys is not None and not self._is_stale():
            key = find_key(self._keys, kid)
            if key is not None:
                return key
        await self._refresh()
        if self._keys is None:
            raise SigningKeysUnavailableError(
                "the identity provider's signing keys are unavailable"
            )
        return find_key(self._keys, kid)

    def _is_stale(self) -> bool:
        return self._clock() - self._fetched_at >= self._cache_seconds

    def _may_refresh(self) -> bool:
        if self._last_attempt is None:
            return True
        interval = self._min_refresh_seconds
        if self._keys is None:
            # Nothing cached (the IdP failed at start-up): retry sooner, every request is a 503.
            interval = min(interval, _NO_KEYS_RETRY_SECONDS)
        return self._clock() - self._last_attempt >= interval

    async def _refresh(self) -> None:
        if self._lock.locked():
            # A fetch is in flight: wait for it and use its result rather than fail.
            async with self._lock:
                return
        if not self._may_refresh():
            return
        async with self._lock:
            # Whoever held the lock before us may have just refreshed.
            if not self._may_refresh():
                return
            self._last_attempt = self._clock()
            self.fetch_count += 1
            try:
                async with asyncio.timeout(self._timeout_seconds):
                    keys = await self._fetch()
            except (httpx.HTTPError, ValueError, TimeoutError) as exc:
                logger.warning(
                    "could not fetch the identity provider's signing keys",
                    extra={"issuer": self.issuer_url, "error": f"{type(exc).__name__}: {exc}"},
                )
                return
            self._keys = keys
            self._fetched_at = self._clock()

    async def _fetch(self) -> dict[str | None, PyJWK]:
        timeout = httpx.Timeout(self._timeout_seconds)
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, transport=self._transport
        ) as client:
            configuration = await _get_json(client, discovery_url(self.issuer_url))
            if not isinstance(configuration, dict):
                raise ValueError("the OpenID configuration is not a JSON object")
            if configuration.get("issuer") != self.issuer_url:
                # OIDC Discovery §4.3: the document must name exactly the issuer we asked.
                raise ValueError(
                    f"the OpenID configuration names issuer {configuration.get('issuer')!r},"
                    f" expected {self.issuer_url!r} (OIDC_ISSUER_URL must match it exactly)"
                )
            jwks_uri = configuration.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not _is_trusted_url(jwks_uri, self.issuer_url):
                raise ValueError(f"unusable jwks_uri {jwks_uri!r}")
            keys = parse_jwk_set(await _get_json(client, jwks_uri))
        if not keys:
            raise ValueError("the JWK Set holds no RS256/ES256 signing key")
        return keys


def _is_trusted_url(url: str, issuer_url: str) -> bool:
    """https, or http only when the issuer itself is plain http on this machine (tests, dev)."""
    parsed = urlsplit(url)
    if parsed.scheme == "https":
        return bool(parsed.hostname)
    issuer = urlsplit(issuer_url)
    return (
        parsed.scheme == "http"
        and issuer.scheme == "http"
        and issuer.hostname in _LOOPBACK_HOSTS
        and parsed.hostname in _LOOPBACK_HOSTS
    )


async def _get_json(client: httpx.AsyncClient, url: str) -> Any:
    async with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
        if response.status_code != 200:
            raise ValueError(f"GET {url} answered {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > _MAX_DOCUMENT_BYTES:
                raise ValueError(f"GET {url}: response larger than {_MAX_DOCUMENT_BYTES} bytes")
    return json.loads(body)
