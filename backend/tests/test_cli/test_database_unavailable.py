"""An unreachable database is one line naming host:port and the cause, and exit status 3.

`run`, `migrate` and the admin CLI say it the same way; readiness logs the cause (the probe's
response only says "unreachable").
"""

from __future__ import annotations

import json

import httpx
import pytest

from app.core.config import load_settings
from app.database import Database
from app.database.engine import build_runtime_engine, targets_for
from app.database.session import make_sessionmaker
from app.database.unavailable import EXIT_DATABASE_UNAVAILABLE
from app.main import create_app
from tests.dev_server import free_port
from tests.test_cli.conftest import RunCli

CLOSED_PORT = free_port()  # nothing listens there: every connection is refused
UNREACHABLE_URL = f"postgresql://postgres:pw@127.0.0.1:{CLOSED_PORT}/tenant_docs"
EXPECTED = f"error: cannot reach the database at 127.0.0.1:{CLOSED_PORT}: Connection refused"


@pytest.mark.parametrize(
    "command", [["migrate"], ["run", "--port", "0"], ["list-tenants"], ["create-tenant", "Acme"]]
)
async def test_unreachable_database_is_one_line_with_host_port_and_cause(
    run_cli: RunCli, command: list[str]
) -> None:
    result = await run_cli(*command, DATABASE_URL=UNREACHABLE_URL)
    assert result.returncode == EXIT_DATABASE_UNAVAILABLE, result.stderr
    assert result.stderr.strip().splitlines() == [EXPECTED]
    assert "API:" not in result.stdout  # `run` never announces a server it could not start


async def test_readiness_logs_where_and_why_the_database_is_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    production_like = load_settings(
        ENVIRONMENT="production",
        DATABASE_URL=UNREACHABLE_URL,
        APP_RUNTIME_PASSWORD="pw",
        OIDC_ISSUER_URL="https://login.example.org",
        OIDC_CLIENT_ID="tenant-docs-api",
        CURSOR_SECRET="s",
        LOG_LEVEL="WARNING",
    )
    targets = targets_for(production_like.database_url, "pw")  # type: ignore[arg-type]
    engine = build_runtime_engine(targets, production_like)
    database = Database(targets=targets, engine=engine, sessions=make_sessionmaker(engine))
    try:
        app = create_app(production_like, database)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/api/v1/health/ready")
    finally:
        await engine.dispose()
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "unreachable"
    assert str(CLOSED_PORT) not in response.text  # where the database is stays in the log
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    [logged] = [r for r in records if r["message"] == "readiness: database unreachable"]
    assert logged["cause"] == EXPECTED.removeprefix("error: ")


async def test_unknown_host_names_the_resolver_error(run_cli: RunCli) -> None:
    result = await run_cli("migrate", DATABASE_URL="postgresql://u:p@no-such-host.invalid:5432/db")
    assert result.returncode == EXIT_DATABASE_UNAVAILABLE
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach the database at no-such-host.invalid:5432: ")
    assert "no-such-host.invalid" in line.split(": ", 2)[2]
