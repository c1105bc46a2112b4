"""`python -m app run` with its embedded PostgreSQL: the port, and stopping on every signal.

Each run uses an embedded server of its own (a fresh data directory), found through its
`postmaster.pid`: nothing here looks processes up, or stops them, by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.cli.serve import EXIT_PORT_UNAVAILABLE
from app.content.embedded_process import STATE_FILE
from app.core.config import BACKEND_DIR
from tests.dev_server import free_port

# Variables of the parent test process that must not reach the server under test.
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


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """The embedded server's directory for one test (not under pytest's tmp_path: when tests run
    as root, the server runs as another user, and a concurrent pytest run resets pytest's base
    temp directory to mode 0700, which that user can't traverse)."""
    root = Path(tempfile.mkdtemp(prefix="tenantdocs-run-"))
    yield root / "db"
    # A failed test may leave its server running: stop it (fast shutdown) by its own PID file.
    leftover = _postmaster_pid(root / "db")
    if leftover is not None and _is_running(leftover):
        os.kill(leftover, signal.SIGINT)
        psutil.Process(leftover).wait(timeout=30)
    openbao = _openbao_pid(root / "db")
    if openbao is not None and _is_running(openbao):
        os.kill(openbao, signal.SIGTERM)
        psutil.Process(openbao).wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def _environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_APP_VARIABLES)}
    env.update(
        ENVIRONMENT="development",
        EMBEDDED_DB_DIR=str(data_dir),
        # `run` gives the demo tenant its key: an embedded OpenBao starts beside the database.
        EMBEDDED_OPENBAO_DIR=str(data_dir.parent / "openbao"),
        EMBEDDED_S3_DIR=str(data_dir.parent / "seaweedfs"),
        DEV_ISSUER_KEY_FILE=str(data_dir.parent / "dev-key.pem"),
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
    except FileNotFoundError:
        return None


def _openbao_pid(data_dir: Path) -> int | None:
    """The pid of the embedded OpenBao `run` started beside `data_dir`, while it runs."""
    state = data_dir.parent / "openbao" / STATE_FILE
    return int(json.loads(state.read_text())["pid"]) if state.exists() else None


def _is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _handle_pids(data_dir: Path) -> list[int]:
    path = data_dir / "pgdata" / ".handle_pids.json"
    return [int(pid) for pid in json.loads(path.read_text())] if path.exists() else []


def _start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], list[str]]:
    """Start `run` (port from PORT, as Railway and `make run PORT=…` give it); wait until live."""
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "run"],
        cwd=BACKEND_DIR,
        env=_environment(data_dir, PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    printed: list[str] = []
    while not any(line.startswith("More tokens:") for line in printed):
        line = server.stdout.readline()
        assert line, "run exited before serving:\n" + "".join(printed)
        printed.append(line)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health/live").status_code == 200:
                return server, printed
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.1)


def _stop_with(server: subprocess.Popen[str], sig: signal.Signals) -> str:
    server.send_signal(sig)
    output, _ = server.communicate(timeout=60)
    return output


def test_every_stop_signal_stops_the_embedded_server_and_stale_pids_are_pruned(
    data_dir: Path,
) -> None:
    # SIGTERM first: the finding (an IDE's stop button, `kill`, `timeout`).
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        port = free_port()
        server, printed = _start(data_dir, port)
        assert f"API: http://127.0.0.1:{port}/api/v1/health/ready" in "".join(printed)
        postgres = _postmaster_pid(data_dir)
        assert postgres is not None
        assert _is_running(postgres)
        assert server.pid in _handle_pids(data_dir)
        openbao = _openbao_pid(data_dir)
        assert openbao is not None
        assert _is_running(openbao)

        output = _stop_with(server, sig)

        assert "Traceback" not in output, output
        assert not _is_running(postgres), f"{sig.name} left PostgreSQL {postgres} running"
        assert not _is_running(openbao), f"{sig.name} left OpenBao {openbao} running"
        assert _postmaster_pid(data_dir) is None
        assert _handle_pids(data_dir) == []
        # What a process killed outright (SIGKILL: no handler can run) leaves behind: its PID
        # in the handle list. The next run must prune it, or it would never stop the server.
        dead = subprocess.Popen(["true"])
        dead.wait()
        (data_dir / "pgdata" / ".handle_pids.json").write_text(json.dumps([dead.pid]))


def test_a_busy_port_fails_first_with_one_line(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "app", "run", "--port", str(port)],
            cwd=BACKEND_DIR,
            env=_environment(data_dir),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == EXIT_PORT_UNAVAILABLE
    assert result.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert result.stdout == ""  # no banner, no curl for a port someone else serves
    assert not data_dir.exists()  # nothing was started or migrated


def test_make_run_passes_port_through() -> None:
    result = subprocess.run(
        ["make", "-n", "run", "PORT=8123"],
        cwd=BACKEND_DIR.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "exec " in result.stdout
    assert "-m app run --port 8123" in result.stdout
