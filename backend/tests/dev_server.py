"""Run the real `python -m app run` (dev mode, as `make run` does) for a test, and read its curl."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.content.embedded_openbao import EmbeddedOpenBao
from app.content.embedded_seaweedfs import EmbeddedS3
from app.core.config import BACKEND_DIR
from tests.conftest import MigratedDatabase
from tests.test_cli.conftest import cli_environment


@dataclass
class DevServer:
    """A running dev server: its port and what it printed before serving."""

    port: int
    printed: list[str]
    pid: int
    log_path: Path

    def log_tail(self, characters: int = 4000) -> str:
        """The end of the server's log (stderr), for an assertion message when a test fails."""
        return self.log_path.read_text(errors="replace")[-characters:]

    @property
    def token(self) -> str:
        """The demo admin's dev token from the printed curl."""
        words = shlex.split(self.curl)
        return words[words.index("-H") + 1].removeprefix("Authorization: Bearer ")

    @property
    def curl(self) -> str:
        """The ready-to-paste curl for /api/v1/me that `run` printed."""
        line = next((line.strip() for line in self.printed if line.startswith("curl ")), None)
        assert line is not None, "".join(self.printed)
        return line


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _wait_until_live(port: int, server: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for _ in range(200):
            assert server.returncode is None, "the server exited"
            try:
                if (await http.get("/api/v1/health/live")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the server did not come up")


@asynccontextmanager
async def dev_server(
    migrated_db: MigratedDatabase,
    tmp_path: Path,
    openbao: EmbeddedOpenBao,
    **extra: str,
) -> AsyncIterator[DevServer]:
    """Start `python -m app run` on a free port against the test database and `openbao`; stop
    it after."""
    port = free_port()
    env = cli_environment(
        migrated_db,
        tmp_path / "dev-key.pem",
        openbao,
        ENVIRONMENT="development",
        LOG_LEVEL="WARNING",
        **extra,
    )
    log_path = tmp_path / "dev-server.log"
    log = log_path.open("wb")
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "run",
        "--port",
        str(port),
        cwd=BACKEND_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    log.close()  # the child holds its own copy
    try:
        assert server.stdout is not None
        printed: list[str] = []
        while not any(line.startswith("More tokens:") for line in printed):
            line = (await asyncio.wait_for(server.stdout.readline(), timeout=60)).decode()
            assert line, "the server exited before printing its curl: " + "".join(printed)
            printed.append(line)
        await _wait_until_live(port, server)
        yield DevServer(port=port, printed=printed, pid=server.pid, log_path=log_path)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test may have killed it
            server.terminate()
        await asyncio.wait_for(server.wait(), timeout=30)


def s3_environment(server: EmbeddedS3) -> dict[str, str]:
    """Settings that point the app at `server` (the run's SeaweedFS) for document content."""
    return {
        "S3_BUCKET": server.bucket,
        "S3_ENDPOINT_URL": server.endpoint_url,
        "S3_REGION": server.region,
        "S3_ACCESS_KEY_ID": server.access_key_id,
        "S3_SECRET_ACCESS_KEY": server.secret_access_key,
    }
