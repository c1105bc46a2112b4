"""docker-compose.yml: pgvector db with a volume and healthcheck, one-shot migrate, then the API."""

from __future__ import annotations

import re
from typing import Any

from tests.test_deploy.artifacts import (
    NOT_APP_SETTINGS,
    REPO_ROOT,
    START_COMMAND,
    load_yaml,
    setting_names,
)


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = load_yaml(REPO_ROOT / "docker-compose.yml")
    return compose


def _interpolated(value: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", value))


def test_db_is_pgvector_with_a_named_volume_and_pg_isready() -> None:
    compose = _compose()
    db = compose["services"]["db"]
    assert re.fullmatch(r"pgvector/pgvector:pg(1[5-9]|[2-9]\d)", db["image"])
    volume_name, mount = db["volumes"][0].split(":", 1)
    assert mount == "/var/lib/postgresql/data"
    assert volume_name in compose["volumes"]
    test = db["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert test[1].startswith("pg_isready")
    assert set(db["environment"]) == {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}


def test_api_waits_for_healthy_db_and_completed_migrations() -> None:
    services = _compose()["services"]
    migrate, api = services["migrate"], services["api"]
    assert migrate["command"] == ["alembic", "upgrade", "head"]
    assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert api["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    # The api keeps the image's start command (uvicorn on $PORT): no migration in the web process.
    assert "command" not in api
    assert "--port ${PORT:-8000}" in START_COMMAND
    for service in (migrate, api):
        assert service["build"]["context"] == "./backend"
        assert (REPO_ROOT / service["build"]["context"] / "Dockerfile").is_file()


def test_vector_indexes_service_keeps_the_per_tenant_indexes_in_line_on_its_own() -> None:
    service = _compose()["services"]["vector-indexes"]
    assert service["command"][:4] == ["python", "-m", "app", "vector-indexes"]
    assert service["command"][4:] == ["--every", "${VECTOR_INDEX_INTERVAL_SECONDS:-900}"]
    assert service["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert service["restart"] == "unless-stopped"
    assert service["build"]["context"] == "./backend"


def test_api_env_names_are_settings_the_app_reads() -> None:
    services = _compose()["services"]
    for name in ("migrate", "api", "vector-indexes"):
        service = services[name]
        assert service["env_file"] == ".env"
        assert set(service["environment"]) <= setting_names()
        assert {"DATABASE_URL", "APP_RUNTIME_PASSWORD"} <= set(service["environment"])
        database_url = service["environment"]["DATABASE_URL"]
        assert database_url.startswith("postgresql://")
        assert "@db:5432/" in database_url


def test_every_interpolated_variable_is_documented_in_env_example() -> None:
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    names = _interpolated(text)
    assert names <= setting_names() | set(NOT_APP_SETTINGS)
    env_example = (REPO_ROOT / ".env.example").read_text()
    for name in names:
        assert re.search(rf"^(# )?{name}=", env_example, re.M), name
