"""docker-compose.yml: pgvector db with a volume and healthcheck, one-shot migrate, the API and
the worker, SeaweedFS and OpenBao (with its one-shot init) for document content."""

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
        "seaweedfs": {"condition": "service_started"},
        "openbao-init": {"condition": "service_completed_successfully"},
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


def test_worker_runs_the_ingest_jobs_from_the_same_image_once_content_is_reachable() -> None:
    services = _compose()["services"]
    worker, api = services["worker"], services["api"]
    assert worker["command"] == ["python", "-m", "app", "worker"]
    assert worker["image"] == api["image"]
    assert worker["build"] == api["build"]
    assert worker["environment"] == api["environment"]
    assert worker["depends_on"] == api["depends_on"]
    assert worker["volumes"] == api["volumes"] == ["tls:/tls:ro"]
    assert worker["restart"] == "unless-stopped"
    assert "ports" not in worker


def test_services_without_an_http_port_do_not_inherit_the_images_http_health_check() -> None:
    # The backend image's HEALTHCHECK calls /api/v1/health/live; the worker and the index
    # maintainer serve no HTTP, so it would mark them unhealthy while they work.
    services = _compose()["services"]
    for name in ("worker", "vector-indexes"):
        assert services[name]["healthcheck"] == {"test": ["NONE"]}, name
    assert "healthcheck" not in services["api"]


def test_content_points_at_compose_own_seaweedfs_and_openbao_over_https() -> None:
    compose = _compose()
    services = compose["services"]
    api = services["api"]["environment"]
    seaweedfs, openbao_init = services["seaweedfs"], services["openbao-init"]
    for service in (seaweedfs, services["openbao"], openbao_init):
        assert service["build"] == {"context": "./backend", "dockerfile": "selfhost/Dockerfile"}
        assert (REPO_ROOT / "backend" / service["build"]["dockerfile"]).is_file()
    # One bucket and one S3 identity on both sides; the app trusts only SeaweedFS's certificate.
    assert api["S3_BUCKET"] == seaweedfs["environment"]["S3_BUCKET"]
    for key in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
        assert api[key] == seaweedfs["environment"][key]
        assert api[key].startswith("${" + key + ":?")
    assert api["S3_ENDPOINT_URL"] == "https://seaweedfs:8333"
    assert api["S3_CA_BUNDLE"] == "/tls/seaweedfs.crt"
    # The app's OpenBao token is the one openbao-init creates, limited to transit.
    assert api["KMS_PROVIDER"] == "openbao"
    for key in ("OPENBAO_ADDR", "OPENBAO_CA_CERT", "OPENBAO_TOKEN"):
        assert api[key] == openbao_init["environment"][key], key
    assert api["OPENBAO_ADDR"] == "https://openbao:8200"
    # Unseal key and root token: a volume only openbao-init mounts.
    mounts = {
        name: {volume.split(":")[0] for volume in service.get("volumes", [])}
        for name, service in services.items()
    }
    assert [name for name, volumes in mounts.items() if "openbao-init" in volumes] == [
        "openbao-init"
    ]
    assert {"seaweedfs-data", "openbao-data", "openbao-init", "tls"} <= set(compose["volumes"])
    assert openbao_init["restart"] == "no"
    assert openbao_init["depends_on"] == {"openbao": {"condition": "service_started"}}


def test_seaweedfs_never_reports_home() -> None:
    script = (REPO_ROOT / "backend" / "selfhost" / "seaweedfs.sh").read_text()
    assert "-master.telemetry=false" in script
    # Only the S3 API listens beyond the container, over TLS.
    assert "-ip.bind=127.0.0.1" in script
    assert "-s3.ip.bind=0.0.0.0" in script
    assert "-s3.cert.file=" in script


def test_api_env_names_are_settings_the_app_reads() -> None:
    services = _compose()["services"]
    for name in ("migrate", "api", "worker", "vector-indexes"):
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
