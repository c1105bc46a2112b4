"""The client's address behind a reverse proxy, believed only from proxies we trust.

The audit log records `request.client.host`. Behind Railway's edge (or any load balancer) that is
the proxy's address; the client's is in a header the proxy sets. A header from any other peer is
whatever the caller typed, so it is ignored unless the peer is in TRUSTED_PROXIES.
"""

from __future__ import annotations

import contextlib
import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.core.config import ClientIpHeader


class TrustedProxyClientAddress:
    """Take the ASGI `client` from the proxy's header when the connecting peer is trusted.

    X-Forwarded-For is uvicorn's ProxyHeadersMiddleware (right-most untrusted hop, also
    X-Forwarded-Proto). X-Real-IP, which Railway's edge sets and overwrites, is one address.
    """

    def __init__(
        self, app: ASGIApp, *, trusted_proxies: list[str], client_header: ClientIpHeader
    ) -> None:
        self.app = app
        self.networks = [ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies]
        self.header = client_header.value.lower().encode("latin-1")
        self.forwarded_for = (
            # uvicorn types ASGI apps more narrowly than Starlette; the protocol is the same.
            ProxyHeadersMiddleware(app, trusted_hosts=trusted_proxies)  # type: ignore[arg-type]
            if client_header is ClientIpHeader.X_FORWARDED_FOR and trusted_proxies
            else None
        )

    def _trusts(self, host: str | None) -> bool:
        try:
            address = ipaddress.ip_address(host or "")
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] not in ("http", "websocket") or not self.networks:
            await self.app(scope, receive, send)
            return
        if self.forwarded_for is not None:
            await self.forwarded_for(scope, receive, send)  # type: ignore[arg-type]
            return
        client = scope.get("client")
        if client and self._trusts(client[0]):
            real_ip = dict(scope["headers"]).get(self.header)
            if real_ip is not None:
                candidate = real_ip.decode("latin-1").strip()
                # Not an address: keep the peer's rather than record garbage.
                with contextlib.suppress(ValueError):
                    scope["client"] = (str(ipaddress.ip_address(candidate)), 0)
        await self.app(scope, receive, send)
