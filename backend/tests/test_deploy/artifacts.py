"""Where the deployment artifacts live, and what the app itself says they must agree with."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from app.api.v1 import health
from app.core.config import Settings, load_settings
from app.main import create_app

BACKEND_DIR = Path(__file__).resolve().parents[2]
REPO_ROOT = BACKEND_DIR.parent
DOCS_DIR = BACKEND_DIR / "docs"


@dataclass(frozen=True)
class OutsideReader:
    """A variable that is not an app setting but may be listed, who reads it and why."""

    reason: str
    read_in: Path


# Variables that may be listed although the Settings class does not read them. Each names the
# file that does read it; a test checks that file really mentions the variable.
NOT_APP_SETTINGS: dict[str, OutsideReader] = {
    "PORT": OutsideReader(
        "the start command listens on it (uvicorn --port $PORT); Railway injects it",
        BACKEND_DIR / "Dockerfile",
    ),
    "TEST_DATABASE_URL": OutsideReader(
        "the test harness uses this PostgreSQL server instead of an embedded one",
        BACKEND_DIR / "tests" / "database_harness.py",
    ),
    "POSTGRES_USER": OutsideReader(
        "docker compose: the db container's superuser, also in the api's DATABASE_URL",
        REPO_ROOT / "docker-compose.yml",
    ),
    "POSTGRES_PASSWORD": OutsideReader(
        "docker compose: the db container's superuser password, also in the api's DATABASE_URL",
        REPO_ROOT / "docker-compose.yml",
    ),
    "POSTGRES_DB": OutsideReader(
        "docker compose: the db container's database, also in the api's DATABASE_URL",
        REPO_ROOT / "docker-compose.yml",
    ),
}

# Settings the one-click Railway template deliberately leaves out, with the reason.
TEMPLATE_OMITS: dict[str, str] = {
    "EMBEDDED_DB_DIR": "development only: production requires DATABASE_URL, so the embedded "
    "server never starts and its data directory is never read",
    "DEV_ISSUER_KEY_FILE": "development only: production refuses the dev token issuer, so its "
    "signing key is never created or read",
    "CURSOR_SECRET_FILE": "development only: production requires CURSOR_SECRET, so the "
    "per-installation dev cursor key is never created or read",
    "AUDIT_ANCHOR_SIGNING_KEY": "must not live on the server: an anchor proves the chain to "
    "someone who distrusts whoever controls the database and the server, so it is signed "
    "elsewhere (docs/AUDIT_INTEGRITY.md); the server needs only the public verify key",
    "BENCH_BASELINE_ROUTES": "benchmarks only: production refuses it (the routes skip "
    "authentication)",
}

# --no-proxy-headers: forwarded headers are the app's job (TRUSTED_PROXIES), not uvicorn's, which
# would otherwise believe X-Forwarded-For from 127.0.0.1 whatever the settings say.
START_COMMAND = (
    "exec uvicorn app.main:create_app --factory --host 0.0.0.0 --port ${PORT:-8000}"
    " --no-access-log --no-proxy-headers"
)


def setting_names() -> set[str]:
    """Every environment variable the Settings class reads."""
    return set(Settings.model_fields)


@cache
def ready_path() -> str:
    """The path the real app serves the readiness probe (`health.ready`) on."""
    app = create_app(load_settings(ENVIRONMENT="test"))
    path = app.url_path_for(health.ready.__name__)
    assert "get" in app.openapi()["paths"][path], f"{path} is not a GET route"
    return str(path)


def load_json(name: str) -> Any:
    """A JSON file at the repository root."""
    return json.loads((REPO_ROOT / name).read_text())


def load_yaml(path: Path) -> Any:
    """A YAML file (merge keys resolved)."""
    return yaml.safe_load(path.read_text())


_ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def env_example_entries() -> dict[str, str | None]:
    """`.env.example`'s variables: value for active lines, None for commented-out ones."""
    entries: dict[str, str | None] = {}
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        match = _ENV_LINE.match(line.strip())
        if match:
            commented, name, value = match.groups()
            entries[name] = None if commented else value
    return entries


def readme_configuration_names() -> set[str]:
    """The variables named in the first column of the root README's configuration table."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("| ---"):
            continue
        first_cell = line.split("|")[1]
        names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell))
    return names


def template_service(name: str) -> dict[str, Any]:
    """One service of template.json by name."""
    services = {service["name"]: service for service in load_json("template.json")["services"]}
    return services[name]  # type: ignore[no-any-return]
