"""Settings: URL normalisation, clear one-line errors, secrets kept out of reprs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import (
    BACKEND_DIR,
    ClientIpHeader,
    Environment,
    Settings,
    SettingsError,
    load_settings,
)


@pytest.mark.parametrize(
    "raw",
    [
        "postgres://u:p@db.example:5432/app",
        "postgresql://u:p@db.example:5432/app",
        "postgresql+psycopg://u:p@db.example:5432/app",
    ],
)
def test_railway_style_urls_use_psycopg3(raw: str) -> None:
    settings = load_settings(DATABASE_URL=raw)
    assert settings.database_url is not None
    assert settings.database_url.drivername == "postgresql+psycopg"
    assert settings.database_url.host == "db.example"
    assert settings.database_url.database == "app"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("mysql://u:p@h/app", "expected a postgresql:// URL"),
        ("not a url", "expected a URL like postgresql://"),
        ("postgresql://u:p@h:5432/", "expected a database name"),
    ],
)
def test_malformed_database_url_is_one_clear_line(raw: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(DATABASE_URL=raw)
    message = str(caught.value)
    assert "DATABASE_URL" in message
    assert expected in message
    assert "\n" not in message


def test_production_requires_its_settings() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL: required when ENVIRONMENT=production"):
        load_settings(ENVIRONMENT="production", OIDC_ISSUER_URL="https://idp", OIDC_CLIENT_ID="c")
    with pytest.raises(SettingsError, match="OIDC_ISSUER_URL: required"):
        load_settings(ENVIRONMENT="production", DATABASE_URL="postgresql://u:p@h/db")


def test_secrets_never_in_repr() -> None:
    settings = load_settings(
        DATABASE_URL="postgresql://u:hunter2@h/app",
        OIDC_CLIENT_SECRET="s3cret-client",
        AWS_SECRET_ACCESS_KEY="aws-s3cret",
        APP_RUNTIME_PASSWORD="runtime-s3cret",
        S3_ACCESS_KEY_ID="AKIDS3",
        S3_SECRET_ACCESS_KEY="bucket-s3cret",
        OPENBAO_TOKEN="bao-s3cret",
    )
    text = repr(settings) + str(settings)
    secrets = ("hunter2", "s3cret-client", "aws-s3cret", "runtime-s3cret")
    for secret in (*secrets, "bucket-s3cret", "bao-s3cret"):
        assert secret not in text


def test_origins_and_defaults() -> None:
    settings = load_settings(ALLOWED_ORIGINS="https://a.example, https://b.example")
    assert settings.ALLOWED_ORIGINS == ["https://a.example", "https://b.example"]
    assert settings.DB_POOL_SIZE == 10
    assert settings.DB_MAX_OVERFLOW == 10
    assert settings.ENVIRONMENT is Environment.TEST or settings.ENVIRONMENT is not None


def test_process_exits_with_one_line_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        cwd=BACKEND_DIR,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": "mysql://x@y/z", "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: invalid configuration: DATABASE_URL:")
    assert "Traceback" not in result.stderr


def test_every_production_problem_is_reported_at_once_one_line_each(tmp_path: Path) -> None:
    # Nothing but ENVIRONMENT=production: every required variable is missing, and '*' origins
    # are refused, all in the one message of one start-up. (Benchmark routes are no setting any
    # more: bench/baseline.py mounts them and refuses production itself.)
    result = subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "PYTHONPATH": str(BACKEND_DIR),
            "ENVIRONMENT": "production",
            "ALLOWED_ORIGINS": "*",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: invalid configuration (7 problems):"
    named = [line.strip().split(":", 1)[0] for line in lines[1:]]
    assert sorted(named) == sorted(
        [
            "DATABASE_URL",
            "OIDC_ISSUER_URL",
            "CURSOR_SECRET",
            "ALLOWED_ORIGINS",
            "S3_BUCKET",
            "AWS_REGION",
            "KMS_PROVIDER",
        ]
    )


def test_field_errors_are_all_reported_too() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(DB_POOL_SIZE="0", LOG_LEVEL="LOUD", TRUSTED_PROXIES="10.0.0.0/8, proxy")
    lines = str(caught.value).splitlines()
    assert lines[0] == "invalid configuration (3 problems):"
    assert sorted(line.strip().split(":", 1)[0] for line in lines[1:]) == [
        "DB_POOL_SIZE",
        "LOG_LEVEL",
        "TRUSTED_PROXIES",
    ]
    assert "'proxy'" in str(caught.value)


def test_trusted_proxies_and_client_header_parse() -> None:
    settings = load_settings(
        TRUSTED_PROXIES="100.64.0.0/10, 10.1.2.3 ,2001:db8::/32", CLIENT_IP_HEADER="x-real-ip"
    )
    assert settings.TRUSTED_PROXIES == ["100.64.0.0/10", "10.1.2.3", "2001:db8::/32"]
    assert settings.CLIENT_IP_HEADER is ClientIpHeader.X_REAL_IP
    assert load_settings().TRUSTED_PROXIES == []


def test_dot_env_is_the_repository_roots_whatever_the_current_directory(tmp_path: Path) -> None:
    # A .env in the current directory is never read; the repository root's is (docs say so).
    assert Path(Settings.model_config["env_file"]) == BACKEND_DIR.parent / ".env"  # type: ignore[arg-type]
    (tmp_path / ".env").write_text("LOG_LEVEL=LOUD\n")
    readme = (BACKEND_DIR.parent / "README.md").read_text()
    assert "reads the repository root's `.env`" in readme
    for cwd in (tmp_path, BACKEND_DIR, BACKEND_DIR.parent):
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from app.core.config import Settings; print(Settings().model_config['env_file'])",
            ],
            cwd=cwd,
            env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(BACKEND_DIR)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(BACKEND_DIR.parent / ".env")


PRODUCTION = {
    "ENVIRONMENT": "production",
    "DATABASE_URL": "postgresql://u:p@db.example/app",
    "OIDC_ISSUER_URL": "https://idp.example",
    "OIDC_CLIENT_ID": "c",
    "CURSOR_SECRET": "x" * 32,
}
PRODUCTION_CONTENT = {"S3_BUCKET": "docs", "AWS_REGION": "eu-west-1", "KMS_PROVIDER": "aws-kms"}
_OPENBAO = {"OPENBAO_ADDR": "https://bao.example:8200", "OPENBAO_TOKEN": "t"}


def test_production_content_settings_are_checked_when_given() -> None:
    storage = {"S3_BUCKET": "docs", "AWS_REGION": "eu-west-1"}
    with pytest.raises(SettingsError, match="OPENBAO_ADDR: must be https://"):
        load_settings(
            **PRODUCTION, **storage, OPENBAO_ADDR="http://bao.example:8200", OPENBAO_TOKEN="t"
        )
    settings = load_settings(
        **PRODUCTION, **storage, OPENBAO_ADDR="https://bao.example:8200/", OPENBAO_TOKEN="t"
    )
    assert settings.OPENBAO_ADDR == "https://bao.example:8200"
    assert not settings.embedded_key_manager
    with pytest.raises(SettingsError, match="S3_ENDPOINT_URL: must be https://"):
        load_settings(**PRODUCTION, **PRODUCTION_CONTENT, S3_ENDPOINT_URL="http://s3.example")
    assert not load_settings(**PRODUCTION, **PRODUCTION_CONTENT).embedded_object_store


@pytest.mark.parametrize(
    ("missing", "overrides", "expected"),
    [
        ("S3_BUCKET", {}, "S3_BUCKET: required when ENVIRONMENT=production"),
        ("AWS_REGION", {}, "AWS_REGION: required when KMS_PROVIDER=aws-kms"),
        (
            "AWS_REGION",
            {"KMS_PROVIDER": "openbao", **_OPENBAO},
            "AWS_REGION: required when ENVIRONMENT=production",
        ),
        ("KMS_PROVIDER", {}, "KMS_PROVIDER: required when ENVIRONMENT=production"),
        ("", {"KMS_PROVIDER": "openbao"}, "OPENBAO_ADDR: required when KMS_PROVIDER=openbao"),
        ("", {"KMS_PROVIDER": "openbao", "OPENBAO_ADDR": "https://bao.example"}, "OPENBAO_TOKEN"),
    ],
)
def test_production_requires_object_storage_and_a_kms_at_start_up(
    missing: str, overrides: dict[str, str], expected: str
) -> None:
    # The embedded SeaweedFS and OpenBao are refused before the process serves, not at the
    # first upload; each missing variable is named.
    given = {**PRODUCTION, **PRODUCTION_CONTENT, **overrides}
    given.pop(missing, None)
    with pytest.raises(SettingsError) as caught:
        load_settings(**given)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_production_starts_with_a_bucket_and_either_kms() -> None:
    aws = load_settings(**PRODUCTION, **PRODUCTION_CONTENT)
    assert not aws.embedded_object_store
    assert not aws.embedded_key_manager
    # S3_REGION names the bucket's region when it differs; OpenBao needs no AWS region.
    bao = load_settings(
        **PRODUCTION, S3_BUCKET="docs", S3_REGION="eu-west-1", KMS_PROVIDER="openbao", **_OPENBAO
    )
    assert bao.s3_region == "eu-west-1"
    assert not bao.embedded_key_manager


def test_empty_dot_env_lines_leave_the_content_settings_unset() -> None:
    # .env.example's Required section has compose's keys empty; outside production that means
    # embedded servers with their own keys, not an empty key or token.
    settings = load_settings(
        S3_BUCKET="",
        AWS_REGION="",
        KMS_PROVIDER="",
        S3_ACCESS_KEY_ID="",
        S3_SECRET_ACCESS_KEY="",
        OPENBAO_TOKEN="",
        S3_CA_BUNDLE="",
        OPENBAO_CA_CERT="",
    )
    assert settings.embedded_object_store
    assert settings.embedded_key_manager
    assert settings.AWS_REGION is None
    assert settings.S3_ACCESS_KEY_ID is None
    assert settings.S3_SECRET_ACCESS_KEY is None
    assert settings.OPENBAO_TOKEN is None
    assert settings.S3_CA_BUNDLE is None
    assert settings.OPENBAO_CA_CERT is None


def test_development_defaults_to_the_embedded_servers() -> None:
    settings = load_settings(ENVIRONMENT="development")
    assert settings.embedded_object_store
    assert settings.embedded_key_manager
    assert settings.EMBEDDED_S3_DIR == BACKEND_DIR / ".data" / "seaweedfs"
    assert settings.EMBEDDED_OPENBAO_DIR == BACKEND_DIR / ".data" / "openbao"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"S3_ACCESS_KEY_ID": "AK"}, "set both or neither"),
        ({"OPENBAO_ADDR": "http://127.0.0.1:8200"}, "OPENBAO_TOKEN: required when OPENBAO_ADDR"),
        ({"MAX_DOCUMENT_CONTENT_BYTES": "1000"}, "MAX_DOCUMENT_CONTENT_BYTES"),
        ({"S3_SECRET_ACCESS_KEY": "sk"}, "set both or neither"),
        ({"S3_ENDPOINT_URL": "s3.example"}, "S3_ENDPOINT_URL: expected an http(s):// URL"),
        ({"KMS_PROVIDER": "vault"}, "KMS_PROVIDER"),
        ({"KMS_PROVIDER": "aws-kms"}, "AWS_REGION: required when KMS_PROVIDER=aws-kms"),
        ({"KMS_KEY_DELETION_WINDOW_DAYS": "3"}, "KMS_KEY_DELETION_WINDOW_DAYS"),
    ],
)
def test_malformed_content_settings_are_one_clear_line(
    overrides: dict[str, str], expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
