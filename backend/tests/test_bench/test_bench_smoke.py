"""Every `make bench-*` runs end to end at tiny sizes, so no benchmark can rot unnoticed.

Each case runs the command its Makefile target runs (the same module or script, found in the
Makefile's recipe) as a subprocess, with tiny sizes, against the test session's server (or,
for a bench that brings its own server, that one), and checks that it exits 0 and prints its
table. No timing is asserted: speed is read from the full runs (docs/PERFORMANCE.md).

It also holds the rule in bench/__init__.py: a bench leaves the configuration of a server it
shares alone (no ALTER SYSTEM, no new password for app_runtime, a server-wide role).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
import pytest

from app.core.config import BACKEND_DIR
from testkit import database_harness as harness

MAKEFILE = BACKEND_DIR.parent / "Makefile"

# Settings the test process may carry: never let them leak into a bench's environment.
_APP_VARIABLES = ("DATABASE_URL", "APP_RUNTIME_PASSWORD", "OIDC_", "DEV_ISSUER_", "ENVIRONMENT")


@dataclass(frozen=True)
class Smoke:
    """How to run one bench tiny, and a line of its table that must be printed."""

    args: tuple[str, ...]
    table_marker: str
    also_printed: tuple[str, ...] = ()  # more tables the run must print


SMOKE_RUNS = {
    "bench-rls": Smoke(
        ("--docs", "400", "--tenants", "6", "--iterations", "3", "--warmup", "1"),
        "| audit-log page of 50",
    ),
    "bench-audit": Smoke(("--seconds", "0.2", "--rounds", "1"), "| 8 writers, own tenant each"),
    "bench-edge": Smoke(
        (
            "--repeat",
            "1",
        ),
        "16 KiB escaped quotes, the old regex",
    ),
    # With chunks (issue 19): the ladder tenants pass the chunk-index threshold at 3 per document.
    "bench-vector": Smoke(
        (
            *("--docs", "300", "--tenants", "4", "--threshold", "20", "--queries", "2"),
            *("--runs", "1", "--chunks-per-doc", "3"),
        ),
        "Chunk recall@10 per tenant class",
    ),
    "bench-http": Smoke(
        (
            *("--docs", "200", "--tenants", "2", "--seconds", "0.2", "--rounds", "1"),
            *("--warmup", "0.1", "--max-requests", "50", "--concurrency", "2"),
            *("--jwt-iterations", "5", "--cpu-requests", "3"),
        ),
        "| route | conc. |",
        also_printed=(
            "| route | auth p25 / p50 | baseline p25 / p50 |",
            # The load's connections are spread evenly over the two workers (bench/http_load.py).
            "connections per worker 1/1\n",
        ),
    ),
    "bench-content": Smoke(("--sizes-mb", "1", "--rounds", "1"), "| encrypted/plain |"),
    "bench-span": Smoke(("--requests", "20", "--rounds", "1"), "| ours | 100% |"),
    "bench-ingest": Smoke(
        (
            *("--docs", "3", "--repeat", "2", "--latency-docs", "2"),
            *("--small-docs", "2", "--queries", "3"),
        ),
        "| tenant | chunks | chunk index |",
    ),
    "bench-replicas": Smoke(
        ("--tenants", "2", "--docs", "20", "--seconds", "0.3", "--rounds", "1"),
        "| 1 replica  |",
    ),
    "bench-lifecycle": Smoke(("--docs", "5", "--doc-bytes", "1000"), "| offboard --execute"),
    "bench-neighbours": Smoke(
        ("--seconds", "1", "--docs", "20", "--b-rate", "5", "--max-requests", "200"),
        "phase 3/3",
    ),
}


def makefile_bench_commands() -> dict[str, list[str]]:
    """Each `bench-*` target of the Makefile and the Python command its recipe runs."""
    commands: dict[str, list[str]] = {}
    target = None
    for line in MAKEFILE.read_text().splitlines():
        if match := re.match(r"^(bench-[\w-]+):", line):
            target = match.group(1)
        elif target and (match := re.search(r"\$\(BIN\)/python (-m [\w.]+|[\w/]+\.py)", line)):
            commands[target] = match.group(1).split()
            target = None
    return commands


def test_every_makefile_bench_has_a_smoke_run() -> None:
    """A new `make bench-*` target fails here until it gets a tiny run below."""
    assert set(makefile_bench_commands()) == set(SMOKE_RUNS)


def _shared_configuration(server: harness.TestServer) -> list[tuple[object, ...]]:
    """What a bench must not change on a shared server: ALTER SYSTEM settings, app_runtime's
    password."""
    with psycopg.connect(harness.libpq(server.superuser_url), autocommit=True) as conn:
        return conn.execute(
            "SELECT 'setting', name, setting FROM pg_file_settings"
            " WHERE sourcefile LIKE '%postgresql.auto.conf'"
            " UNION ALL SELECT 'password', rolname, rolpassword FROM pg_authid"
            " WHERE rolname = 'app_runtime' ORDER BY 1, 2"
        ).fetchall()


_LONGEST = {"bench-neighbours", "bench-http", "bench-vector"}


@dataclass(frozen=True)
class SmokeResults:
    """Every bench's tiny run, and the shared server's configuration before and after them."""

    runs: dict[str, subprocess.CompletedProcess[str]]
    configuration_before: list[tuple[object, ...]]
    configuration_after: list[tuple[object, ...]]


def _run_smoke(target: str, server_url: str) -> subprocess.CompletedProcess[str]:
    """The bench's own command (from the Makefile), tiny, pointed at `server_url`."""
    command = makefile_bench_commands()[target]
    env = {k: v for k, v in os.environ.items() if not k.startswith(_APP_VARIABLES)}
    # The benches' ways of being pointed at a server (bench-neighbours always starts its own).
    env.update(TEST_DATABASE_URL=server_url, BENCH_DATABASE_URL=server_url, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, *command, *SMOKE_RUNS[target].args],
        cwd=BACKEND_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def smoke_results(
    test_server: harness.TestServer, migrated_db: harness.MigratedDatabase
) -> SmokeResults:
    """All the tiny runs, three at a time: they are mostly waiting (servers starting, timed
    phases), and each uses databases of its own names, so they can share the server."""
    server_url = test_server.superuser_url.render_as_string(hide_password=False)
    before = _shared_configuration(test_server)
    with ThreadPoolExecutor(max_workers=3) as pool:
        # The longest first, so that the last to start are short.
        order = sorted(SMOKE_RUNS, key=lambda target: target not in _LONGEST)
        futures = {target: pool.submit(_run_smoke, target, server_url) for target in order}
        runs = {target: future.result() for target, future in futures.items()}
    return SmokeResults(runs, before, _shared_configuration(test_server))


@pytest.mark.parametrize("target", sorted(SMOKE_RUNS))
def test_bench_runs_end_to_end_at_tiny_size(target: str, smoke_results: SmokeResults) -> None:
    """The bench's own command, tiny, on the test server: exit 0 and its table printed, and
    no bench changed the shared server's configuration."""
    result = smoke_results.runs[target]
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-4000:]}"
    assert result.returncode == 0, output
    smoke = SMOKE_RUNS[target]
    for marker in (smoke.table_marker, *smoke.also_printed):
        assert marker in result.stdout, output
    assert smoke_results.configuration_after == smoke_results.configuration_before
