"""Logs: JSON lines in production, readable console lines elsewhere, the request id on each request.

Both renderings go through one structlog chain that also formats the libraries' stdlib records
(uvicorn's among them), so uvicorn's ANSI `color_message` copy never reaches a log line.
"""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from app.core.config import Environment, Settings
from app.database import Database
from app.main import create_app

REQUEST_ID = "req-logging-0001"


async def _log_a_request_and_a_uvicorn_line(
    settings: Settings, database: Database, environment: Environment
) -> None:
    app = create_app(
        settings.model_copy(update={"ENVIRONMENT": environment, "LOG_LEVEL": "INFO"}), database
    )
    # What uvicorn logs at start-up: the message, plus a coloured copy for its own formatter.
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]", 4242, extra={"color_message": "\x1b[36m%d\x1b[0m"}
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/api/v1/health/live", headers={"X-Request-ID": REQUEST_ID})
    assert response.status_code == 200


async def test_production_logs_are_json_lines_without_color_message(
    settings: Settings, database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    await _log_a_request_and_a_uvicorn_line(settings, database, Environment.PRODUCTION)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    [uvicorn] = [r for r in records if r["logger"] == "uvicorn.error"]
    assert uvicorn["message"] == "Started server process [4242]"
    assert uvicorn["level"] == "info"
    assert "color_message" not in uvicorn
    assert not any("\x1b[" in line for line in lines)
    [request] = [r for r in records if r["logger"] == "app.access"]
    assert request["request_id"] == REQUEST_ID
    assert (request["path"], request["status"]) == ("/api/v1/health/live", 200)


async def test_development_logs_are_console_lines_with_the_request_id(
    settings: Settings, database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    await _log_a_request_and_a_uvicorn_line(settings, database, Environment.DEVELOPMENT)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    [uvicorn] = [line for line in lines if "uvicorn.error" in line]
    assert "Started server process [4242]" in uvicorn
    assert "color_message" not in uvicorn
    [request] = [line for line in lines if "app.access" in line]
    assert f"request_id={REQUEST_ID}" in request
    assert "status=200" in request
