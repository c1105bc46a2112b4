"""Where the deployment artifacts live, and what the app itself says they must agree with."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

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
        BACKEND_DIR / "testkit" / "database_harness.py",
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
    "EMBEDDED_DB_REPLICA": "development only: production refuses the embedded server, so its "
    "embedded replica never starts; real replicas are DATABASE_REPLICA_URLS",
    "VECTOR_INDEX_INTERVAL_SECONDS": "paces only `make run`'s background maintenance and the "
    "compose `vector-indexes` service: on Railway the `vector-indexes` cron service runs it on "
    "its cronSchedule (railway.vector-indexes.json)",
    "EMBEDDED_DB_DIR": "development only: production requires DATABASE_URL, so the embedded "
    "server never starts and its data directory is never read",
    "DEV_ISSUER_KEY_FILE": "development only: production refuses the dev token issuer, so its "
    "signing key is never created or read",
    "CURSOR_SECRET_FILE": "development only: production requires CURSOR_SECRET, so the "
    "per-installation dev cursor key is never created or read",
    "AUDIT_ANCHOR_SIGNING_KEY": "must not live on the server: an anchor proves the chain to "
    "someone who distrusts whoever controls the database and the server, so it is signed "
    "elsewhere (docs/AUDIT_INTEGRITY.md); the server needs only the public verify key",
    "EMBEDDED_S3_DIR": "development only: production requires S3_BUCKET, so the embedded "
    "SeaweedFS never starts and its data directory is never read",
    "EMBEDDED_OPENBAO_DIR": "development only: production requires AWS KMS or an operated "
    "OpenBao (OPENBAO_ADDR), so the embedded OpenBao never starts",
    "S3_CA_BUNDLE": "a file of private CA certificates for a self-hosted S3 (docker compose's "
    "SeaweedFS mounts one): on Railway the bucket is AWS S3, whose certificates the system trusts",
    "OPENBAO_CA_CERT": "a file of private CA certificates for a self-hosted OpenBao (docker "
    "compose's): on Railway the keys are in AWS KMS, whose certificates the system trusts",
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


# Variables a deployment must set although Settings starts without them, with the reason.
DEPLOY_REQUIRED: dict[str, str] = {
    "ENVIRONMENT": "production is what the image runs; platforms and .env files must not say "
    "otherwise (development starts the dev token issuer)",
    "APP_RUNTIME_PASSWORD": "without it requests run as the migration login, which can bypass "
    "Row-Level Security (the app only warns)",
}

# A value that satisfies each production requirement whose format is checked (others: any text).
_SATISFYING_VALUES = {
    "DATABASE_URL": "postgresql://user:password@db.internal:5432/app",
    "OIDC_ISSUER_URL": "https://login.example.org/realms/app",
    "KMS_PROVIDER": "aws-kms",
}


class _InitOnlySettings(Settings):
    """Settings that read only their keyword arguments (no environment, no .env)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, **_: Any) -> Any:
        return (init_settings,)


def production_required_settings() -> frozenset[str]:
    """The variables ENVIRONMENT=production refuses to start without, as Settings reports them.

    Starts from `ENVIRONMENT=production` alone and adds each variable the validation error
    names as required until Settings loads: whatever Settings requires, this finds.
    """
    given: dict[str, str] = {"ENVIRONMENT": "production"}
    for _ in range(len(setting_names())):
        try:
            _InitOnlySettings(**given)
        except ValidationError as exc:
            named = set(re.findall(r"\b([A-Z][A-Z0-9_]*): required", str(exc))) - set(given)
            if not named:
                raise AssertionError(f"production settings fail for another reason: {exc}") from exc
            given.update({name: _SATISFYING_VALUES.get(name, "x" * 32) for name in named})
        else:
            return frozenset(given) - {"ENVIRONMENT"}
    raise AssertionError("production settings never loaded")


def env_example_section(title: str) -> dict[str, str | None]:
    """The variables of one `# --- <title> ---` section of .env.example (None: commented out)."""
    text = (REPO_ROOT / ".env.example").read_text()
    section = text.split(f"# --- {title} ", 1)[1].split("\n# --- ", 1)[0]
    entries: dict[str, str | None] = {}
    for line in section.splitlines()[1:]:
        match = _ENV_LINE.match(line.strip())
        if match:
            commented, name, value = match.groups()
            entries[name] = None if commented else value
    return entries


REQUIRED_SECTION = "Required"


def markdown_bash_block_after(path: Path, heading: str) -> str:
    """The first ```bash block after the first line of `path` containing `heading`."""
    text = path.read_text()
    after = text[text.index(heading) :]
    match = re.search(r"```bash\n(.*?)```", after, re.DOTALL)
    assert match is not None, f"no bash block after {heading!r} in {path.name}"
    return re.sub(r"^ +", "", match.group(1), flags=re.M)


def assignments(block: str) -> dict[str, str]:
    """`NAME=value` lines of a shell block, in order."""
    found: dict[str, str] = {}
    for line in block.splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    return found


README_RAILWAY_DATABASE = "**Database**"
README_RAILWAY_API = "**API**"
RAILWAY_SETUP_BACKEND = "**Set the backend variables**"


def readme_railway_variables(step: str) -> dict[str, str]:
    """The variables a README Railway step (`**Database**`, `**API**`) tells the user to set."""
    return assignments(markdown_bash_block_after(REPO_ROOT / "README.md", step))


def railway_setup_backend_variables() -> dict[str, str]:
    """The backend variables backend/docs/RAILWAY_SETUP.md tells the user to set."""
    return assignments(
        markdown_bash_block_after(DOCS_DIR / "RAILWAY_SETUP.md", RAILWAY_SETUP_BACKEND)
    )


def compose_interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}`, `${NAME:?error}` and `$$`, from `variables`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group("name", "operator", "argument")
        current = variables.get(name, "")
        if operator == ":-":
            return current or argument
        if operator == ":?":
            assert current, f"docker compose would stop: {argument}"
        return current

    pattern = r"\$\$|\$\{(?P<name>[A-Z][A-Z0-9_]*)(?:(?P<operator>:[-?])(?P<argument>[^}]*))?\}"
    return re.sub(pattern, substitute, value)
