"""The bearer scheme in the OpenAPI document, on exactly the operations that need a token.

The token is verified by plain calls in `app.api.deps`, not by a FastAPI security dependency
(each dependency node costs CPU on every request, issue 20), so FastAPI cannot see the scheme.
This adds what it would have added: `components.securitySchemes` and each operation's
`security`, for every route whose dependency tree holds one of `deps.TOKEN_CHECKS`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute, iter_route_contexts

from app.api import deps


def declare_bearer_scheme(app: FastAPI) -> None:
    """Make `app.openapi()` declare the bearer scheme on every operation that needs a token."""
    generate = app.openapi
    declared: dict[str, Any] | None = None  # FastAPI caches the document until routes change

    def openapi() -> dict[str, Any]:
        nonlocal declared
        document = generate()
        if document is not declared:
            _declare(app, document)
            declared = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _declare(app: FastAPI, document: dict[str, Any]) -> None:
    scheme = deps.BEARER_SCHEME
    requirement: dict[str, list[str]] = {scheme.scheme_name: []}
    needed = False
    # The routes as get_openapi walks them: included routers stay nested in FastAPI 0.165.
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        if not _checks_token(route.dependant):
            continue
        operations = document["paths"][route.path_format]
        for method in route.methods or ():
            security = operations[method.lower()].setdefault("security", [])
            if requirement not in security:
                security.append(requirement)
            needed = True
    if needed:
        schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[scheme.scheme_name] = jsonable_encoder(
            scheme.model, by_alias=True, exclude_none=True
        )


def _checks_token(dependant: Dependant) -> bool:
    return any(
        sub.call in deps.TOKEN_CHECKS or _checks_token(sub) for sub in dependant.dependencies
    )
