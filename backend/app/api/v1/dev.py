"""The dev issuer's discovery document and JWKS (mounted only in dev mode, never in production)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.auth.dev_issuer import DevIssuer

router = APIRouter(prefix="/dev", tags=["dev issuer"])


def _issuer(request: Request) -> DevIssuer:
    issuer: DevIssuer = request.app.state.dev_issuer
    return issuer


@router.get("/.well-known/openid-configuration", summary="Dev issuer: OpenID configuration")
async def openid_configuration(request: Request) -> dict[str, Any]:
    """Where the dev issuer's public keys are (dev mode only)."""
    return _issuer(request).discovery_document(str(request.base_url))


@router.get("/jwks.json", summary="Dev issuer: public signing keys (JWKS)")
async def jwks(request: Request) -> dict[str, Any]:
    """The dev issuer's public key (dev mode only)."""
    return _issuer(request).jwks()
