"""template.json: the one-click Railway template has the database, the backend, every setting."""

from __future__ import annotations

import re

from app.core.config import load_settings
from tests.test_deploy.artifacts import (
    BACKEND_DIR,
    REPO_ROOT,
    TEMPLATE_OMITS,
    load_json,
    ready_path,
    setting_names,
    template_service,
)

# The eight variables the spec's template names.
SPEC_VARIABLES = {
    "DATABASE_URL",
    "ALLOWED_ORIGINS",
    "OIDC_ISSUER_URL",
    "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
SECRET_FUNCTION = re.compile(r'^\$\{\{secret\((\d+)(, "[A-Za-z0-9]+")?\)\}\}$')


def test_postgres_runs_pgvector_on_15_or_newer_with_a_volume() -> None:
    postgres = template_service("Postgres")
    match = re.fullmatch(r"pgvector/pgvector:pg(\d+)", postgres["source"]["image"])
    assert match
    assert int(match.group(1)) >= 15
    assert postgres["volumes"][0]["mountPath"] == "/var/lib/postgresql/data"
    assert postgres["variables"]["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")
    assert postgres["networking"] == {"public": False, "tcpProxy": False}


def test_backend_builds_from_the_backend_directory_with_railway_json() -> None:
    backend = template_service("backend")
    assert backend["source"]["rootDirectory"] == "backend"
    assert (REPO_ROOT / backend["source"]["configFile"].lstrip("/")).is_file()
    assert (BACKEND_DIR / backend["build"]["dockerfilePath"]).is_file()
    railway = load_json("railway.json")["deploy"]
    assert backend["deploy"]["preDeployCommand"] in railway["preDeployCommand"]
    assert backend["deploy"]["healthcheckPath"] == railway["healthcheckPath"] == ready_path()
    assert backend["deploy"]["restartPolicyType"] == "ON_FAILURE"


def test_backend_variables_are_exactly_the_settings_with_descriptions() -> None:
    variables = template_service("backend")["variables"]
    assert set(variables) >= SPEC_VARIABLES
    assert set(variables) == setting_names() - set(TEMPLATE_OMITS)
    assert set(TEMPLATE_OMITS) <= setting_names()
    for name, variable in variables.items():
        assert len(variable["description"]) > 20, name
        assert isinstance(variable["required"], bool), name


def test_runtime_password_is_generated_and_production_is_on() -> None:
    variables = template_service("backend")["variables"]
    assert SECRET_FUNCTION.match(variables["APP_RUNTIME_PASSWORD"]["value"])
    assert variables["ENVIRONMENT"]["value"] == "production"
    assert variables["DATABASE_URL"]["value"] == "${{Postgres.DATABASE_URL}}"
    postgres = template_service("Postgres")["variables"]
    assert SECRET_FUNCTION.match(postgres["POSTGRES_PASSWORD"]["value"])
    assert "${{RAILWAY_PRIVATE_DOMAIN}}" in postgres["DATABASE_URL"]["value"]


def test_template_values_load_as_production_settings() -> None:
    """With the user's required inputs filled in, the template's values pass start-up checks."""
    variables = template_service("backend")["variables"]
    filled_in = {
        "DATABASE_URL": "postgresql://postgres:pw@postgres.railway.internal:5432/tenant_docs",
        "APP_RUNTIME_PASSWORD": "generated-by-railway",
        "OIDC_ISSUER_URL": "https://login.example.org",
        "OIDC_CLIENT_ID": "tenant-docs-api",
        # Content storage and keys: the user's AWS bucket and region (KMS_PROVIDER=aws-kms).
        "S3_BUCKET": "tenant-docs-content",
        "AWS_REGION": "eu-west-1",
    }
    values = {name: v["value"] for name, v in variables.items() if v["value"]}
    values.update(filled_in)
    settings = load_settings(**values)
    assert settings.is_production
    required = {name for name, v in variables.items() if v["required"]}
    assert {"DATABASE_URL", "OIDC_ISSUER_URL", "OIDC_CLIENT_ID"} <= required
    for name in required - set(filled_in):
        assert variables[name]["value"], f"{name} is required but the template gives no value"


def test_instructions_cover_deploy_and_hipaa() -> None:
    instructions = load_json("template.json")["instructions"]
    deploy = " ".join(instructions["deploy"])
    assert ready_path() in deploy
    assert "alembic upgrade head" in deploy
    hipaa = " ".join(instructions["hipaa"])
    for topic in ("Business Associate Agreement", "backups", "private", "APP_RUNTIME_PASSWORD"):
        assert topic in hipaa, topic


def test_vector_indexes_cron_service_is_the_backend_image_with_its_variables() -> None:
    cron, backend = template_service("vector-indexes"), template_service("backend")
    config = load_json(cron["source"]["configFile"].lstrip("/"))
    assert cron["source"] == {**backend["source"], "configFile": "/railway.vector-indexes.json"}
    assert cron["deploy"]["startCommand"] == config["deploy"]["startCommand"]
    assert cron["deploy"]["cronSchedule"] == config["deploy"]["cronSchedule"]
    assert set(cron["variables"]) == set(backend["variables"])
    for name, variable in cron["variables"].items():
        assert variable["value"] == "${{backend." + name + "}}"


def test_worker_service_is_the_backend_image_running_the_ingest_worker() -> None:
    worker, backend = template_service("worker"), template_service("backend")
    config = load_json(worker["source"]["configFile"].lstrip("/"))
    assert worker["source"] == {**backend["source"], "configFile": "/railway.worker.json"}
    assert worker["deploy"] == config["deploy"]
    assert worker["networking"] == {"public": False, "tcpProxy": False}
    assert set(worker["variables"]) == set(backend["variables"])
    for name, variable in worker["variables"].items():
        assert variable["value"] == "${{backend." + name + "}}"
