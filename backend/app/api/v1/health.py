"""Liveness and readiness probes (unauthenticated)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.services import health as health_service

router = APIRouter(prefix="/health", tags=["health"])


class Liveness(BaseModel):
    """The process is up."""

    status: str = "ok"


class Readiness(BaseModel):
    """Each readiness check and whether it passed."""

    status: str
    checks: dict[str, str]


@router.get("/live", response_model=Liveness, summary="The process is up (no database call)")
async def live() -> Liveness:
    """Always 200 while the process can answer."""
    return Liveness()


@router.get(
    "/ready",
    response_model=Readiness,
    summary="Ready to serve: database up, pgvector installed, schema at head, runtime role safe,"
    " object storage and KMS answering (when configured or in use)",
    responses={503: {"model": Readiness, "description": "A check failed; its entry says which."}},
)
async def ready(request: Request) -> JSONResponse:
    """200 when every check passes, otherwise 503 naming the failing check (within ~2 s)."""
    database = request.app.state.database
    try:
        checks = await asyncio.wait_for(health_service.readiness(database), timeout=2.0)
    except TimeoutError:
        checks = {"database": "timed out"}
    # Object storage and KMS: only those configured or in use; each bounded by its own timeout.
    checks.update(await request.app.state.content.readiness())
    ok = all(value == "ok" for value in checks.values())
    body = Readiness(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
