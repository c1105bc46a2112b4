"""GET /metrics: the Prometheus text format, for a scraper holding METRICS_TOKEN (issue 21)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from app.core import metrics
from app.core.config import Settings
from app.core.errors import UnauthorizedError

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """Every metric of this process (of all workers in multiprocess mode); bearer token only."""
    settings: Settings = request.app.state.settings
    assert settings.METRICS_TOKEN is not None  # mounted only when set
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.METRICS_TOKEN.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise UnauthorizedError(
            "send Authorization: Bearer <METRICS_TOKEN> to read the metrics", reason="invalid"
        )
    body, content_type = metrics.exposition(settings.PROMETHEUS_MULTIPROC_DIR)
    return Response(content=body, media_type=content_type)
