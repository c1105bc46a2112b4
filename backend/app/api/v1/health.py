"""Liveness and readiness probes (unauthenticated)."""

from __future__ import annotations

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
    summary="Ready to serve: database up, pgvector installed, schema at head, runtime role safe",
    responses={503: {"model": Readiness, "description": "A check failed; its entry says which."}},
)
async def ready(request: Request) -> JSONResponse:
    """200 when every check passes, otherwise 503 naming the failing check (within ~2 s).

    The result is at most a second old: calls share one database check (ReadinessProbe).
    """
    probe: health_service.ReadinessProbe = request.app.state.readiness_probe
    checks = await probe.checks(request.app.state.database)
    ok = all(value == "ok" for value in checks.values())
    body = Readiness(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
