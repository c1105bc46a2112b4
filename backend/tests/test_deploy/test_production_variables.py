"""The variables production requires, as Settings says, are the ones every deploy document asks for.

The list is derived from Settings (production_required_settings), never typed here, so a new
requirement in app/core/config.py fails these tests until the README's Railway step,
backend/docs/RAILWAY_SETUP.md, template.json, .env.example and docker-compose.yml ask for it.
"""

from __future__ import annotations

import re

from tests.test_deploy.artifacts import (
    DEPLOY_REQUIRED,
    README_RAILWAY_API,
    REPO_ROOT,
    REQUIRED_SECTION,
    env_example_section,
    load_yaml,
    production_required_settings,
    railway_setup_backend_variables,
    readme_railway_variables,
    setting_names,
    template_service,
)


def _deploy_required() -> set[str]:
    return set(production_required_settings()) | set(DEPLOY_REQUIRED)


def test_settings_require_what_the_issue_found_missing() -> None:
    # The derivation itself: it must find CURSOR_SECRET (issue 14's failed first deploy).
    assert {"DATABASE_URL", "OIDC_ISSUER_URL", "OIDC_CLIENT_ID", "CURSOR_SECRET"} <= set(
        production_required_settings()
    )
    assert production_required_settings() <= setting_names()


def test_readme_railway_step_sets_every_required_variable() -> None:
    listed = set(readme_railway_variables(README_RAILWAY_API))
    assert _deploy_required() - listed == set(), "missing from the README's Railway API step"
    assert listed <= setting_names()


def test_railway_setup_sets_every_required_variable() -> None:
    listed = set(railway_setup_backend_variables())
    assert _deploy_required() - listed == set(), "missing from docs/RAILWAY_SETUP.md step 5"
    assert listed <= setting_names()


def test_template_marks_exactly_the_required_variables() -> None:
    variables = template_service("backend")["variables"]
    marked = {name for name, variable in variables.items() if variable["required"]}
    assert marked == _deploy_required()


def _compose_api_environment() -> dict[str, str]:
    environment: dict[str, str] = load_yaml(REPO_ROOT / "docker-compose.yml")["services"]["api"][
        "environment"
    ]
    return environment


def test_compose_pins_production_and_demands_every_required_variable() -> None:
    environment = _compose_api_environment()
    # env_file (.env, shared with `make run`) must not switch the image to development.
    assert environment["ENVIRONMENT"] == "production"
    services = load_yaml(REPO_ROOT / "docker-compose.yml")["services"]
    for name in _deploy_required() - {"ENVIRONMENT"}:
        assert name in environment, f"docker-compose.yml's api does not pass {name}"
        value = str(environment[name])
        interpolated = re.findall(r"\$\{([A-Z][A-Z0-9_]*)(:[-?])?", value)
        if not interpolated:
            # Compose's own object storage and KMS (S3_BUCKET, AWS_REGION, KMS_PROVIDER): a
            # fixed value naming a service of the file, never an empty one.
            assert value, name
            assert {"seaweedfs", "openbao", "openbao-init"} <= set(services), name
            continue
        # Either compose builds it (DATABASE_URL) or stops when .env leaves it empty.
        if [name] == [found for found, _ in interpolated]:
            assert (name, ":?") in interpolated, f"compose must stop when {name} is empty"


def test_env_example_required_section_is_what_compose_demands() -> None:
    environment = _compose_api_environment()
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    demanded = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", text))
    section = env_example_section(REQUIRED_SECTION)
    assert set(section) == demanded
    built_by_compose = {name for name in environment if name not in demanded}
    assert _deploy_required() - built_by_compose <= set(section)
    # Active and empty: the user fills them in; compose refuses to start until they do.
    assert all(value == "" for value in section.values()), section
