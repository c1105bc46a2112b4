"""The GitHub Actions workflow: push + PR, lint and tests on pgvector pg15 and pg17, pip cache."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from tests.test_deploy.artifacts import REPO_ROOT, load_yaml

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"


def _workflow() -> dict[str, Any]:
    workflow: dict[str, Any] = load_yaml(WORKFLOW)
    return workflow


def test_runs_on_push_and_pull_request() -> None:
    # PyYAML reads the bare key `on` as the boolean True (YAML 1.1).
    triggers = _workflow()[True]
    assert set(triggers) == {"push", "pull_request"}


def test_test_job_matrix_runs_pgvector_15_and_17_service_containers() -> None:
    job = _workflow()["jobs"]["test"]
    images = job["strategy"]["matrix"]["postgres-image"]
    assert images == ["pgvector/pgvector:pg15", "pgvector/pgvector:pg17"]
    service = job["services"]["postgres"]
    assert service["image"] == "${{ matrix.postgres-image }}"
    assert "pg_isready" in service["options"]
    assert "5432:5432" in service["ports"]
    url = job["env"]["TEST_DATABASE_URL"]
    user, password = service["env"]["POSTGRES_USER"], service["env"]["POSTGRES_PASSWORD"]
    assert url == f"postgresql://{user}:{password}@localhost:5432/postgres"


def test_steps_cache_pip_then_lint_and_test_with_make() -> None:
    steps = _workflow()["jobs"]["test"]["steps"]
    setup_python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert setup_python["with"]["cache"] == "pip"
    assert setup_python["with"]["cache-dependency-path"] == "backend/requirements/dev.lock"
    assert (REPO_ROOT / setup_python["with"]["cache-dependency-path"]).is_file()
    commands = [s["run"] for s in steps if "run" in s]
    # `make test` is `make lint` + `make test-only`: two steps, so a failure says which.
    assert commands == ["make install", "make lint", "make test-only"]


def test_image_job_runs_make_test_image_like_ci_run() -> None:
    steps = _workflow()["jobs"]["image"]["steps"]
    commands = [s["run"] for s in steps if "run" in s]
    assert commands == ["sudo --preserve-env=PATH make test-image"]
    ci_run = (REPO_ROOT / ".ci" / "run").read_text().split()
    assert ci_run[-4:] == ["make", "test", "make", "test-image"]


def test_actionlint_when_available() -> None:
    """actionlint's full check runs wherever a binary is on PATH (CI images, dev machines)."""
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        # The structural checks above always run; this adds actionlint's semantics when present.
        return
    result = subprocess.run(
        [actionlint, str(WORKFLOW)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
