"""Run the real CLI (`python -m app …`) in a subprocess against the test database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from app.cli.main import cli
from app.content.embedded_openbao import EmbeddedOpenBao
from app.core.config import BACKEND_DIR, get_settings
from testkit import database_harness as harness
from tests.conftest import MigratedDatabase

# Settings the parent test process may have: never let them leak into the CLI's environment.
_APP_VARIABLES = (
    "DATABASE_URL",
    "APP_RUNTIME_PASSWORD",
    "OIDC_",
    "DEV_ISSUER_",
    "ENVIRONMENT",
    "EMBEDDED_",
    "OPENBAO_",
    "S3_",
    "KMS_",
)

RunCli = Callable[..., Coroutine[Any, Any, subprocess.CompletedProcess[str]]]


def cli_environment(
    migrated_db: MigratedDatabase,
    dev_key_file: Path,
    openbao: EmbeddedOpenBao | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment for a CLI subprocess: the test database via its migrating login, and
    the run's OpenBao for tenant keys (embedded servers, if any start, beside `dev_key_file`,
    never in backend/.data)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_APP_VARIABLES)}
    if openbao is not None:
        env.update(OPENBAO_ADDR=openbao.address, OPENBAO_TOKEN=openbao.token)
    env.update(
        EMBEDDED_OPENBAO_DIR=str(dev_key_file.parent / "openbao"),
        EMBEDDED_S3_DIR=str(dev_key_file.parent / "seaweedfs"),
    )
    env.update(
        ENVIRONMENT="test",
        DATABASE_URL=migrated_db.owner_url.render_as_string(hide_password=False),
        APP_RUNTIME_PASSWORD=harness.RUNTIME_PASSWORD,
        DEV_ISSUER_KEY_FILE=str(dev_key_file),
        CURSOR_SECRET_FILE=str(dev_key_file.with_name("cursor-secret")),
        CURSOR_SECRET="test-cursor-secret",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture
def run_cli(
    migrated_db: MigratedDatabase, dev_key_file: Path, embedded_openbao: EmbeddedOpenBao
) -> RunCli:
    """`result = await run_cli("create-tenant", "Acme", "--json", ENVIRONMENT=...)`."""

    async def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "app", *args],
            cwd=BACKEND_DIR,
            env=cli_environment(migrated_db, dev_key_file, embedded_openbao, **env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


InvokeCli = Callable[..., Result]


@pytest.fixture
def invoke_cli(
    migrated_db: MigratedDatabase, dev_key_file: Path, embedded_openbao: EmbeddedOpenBao
) -> InvokeCli:
    """The same CLI in-process (typer's CliRunner): fast, for the many bad-input cases.

    Must be called from a synchronous test: the command runs its own event loop.
    """
    runner = CliRunner()

    def invoke(*args: str, **env: str) -> Result:
        get_settings.cache_clear()
        try:
            return runner.invoke(
                cli,
                list(args),
                env=cli_environment(migrated_db, dev_key_file, embedded_openbao, **env),
            )
        finally:
            get_settings.cache_clear()

    return invoke


@pytest.fixture
def run_cli_in_process(invoke_cli: InvokeCli) -> RunCli:
    """`run_cli`'s interface, in-process: for long flows of commands whose process boundary
    other tests already cover (a subprocess pays ~2 s of imports per command).

    One command at a time (CliRunner swaps the process's environment and streams), each in a
    thread so that it can run its own event loop beside the test's.
    """
    one_at_a_time = asyncio.Lock()

    async def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        async with one_at_a_time:
            result = await asyncio.to_thread(invoke_cli, *args, **env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return subprocess.CompletedProcess(
            list(args), result.exit_code, stdout=result.stdout, stderr=result.stderr
        )

    return run
