"""Debian's pgbouncer in transaction mode in front of a test server (issue 22).

`ensure_pgbouncer` installs it with apt-get when run as root and it is missing (as
`make test-image` does for podman); otherwise it says what to install. The pooler listens on a
free loopback port, logs in to the server over its Unix socket (or host and port) with the
passwords it is given, and keeps at most `pool_size` server connections per database and user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

DEBIAN_PACKAGE = "pgbouncer"
# As root, pgbouncer refuses to run; it switches to the user the embedded server runs as.
_UNPRIVILEGED_USER = "embedded_postgres"


def ensure_pgbouncer() -> str:
    """The pgbouncer executable, installed with apt-get first when root and missing."""
    found = shutil.which("pgbouncer") or shutil.which("/usr/sbin/pgbouncer")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", DEBIAN_PACKAGE],
        ):
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
        found = shutil.which("pgbouncer") or shutil.which("/usr/sbin/pgbouncer")
        if found:
            return found
    raise AssertionError(
        f"the pooler tests need pgbouncer: as root on Debian/Ubuntu run `apt-get install "
        f"{DEBIAN_PACKAGE}` (CI runs as root and installs it itself)"
    )


@dataclass
class Pgbouncer:
    """A running pgbouncer and where it listens."""

    process: subprocess.Popen[bytes]
    port: int
    work_dir: Path

    def url(self, url: URL) -> URL:
        """`url` (its login and database) through the pooler."""
        return url.set(host="127.0.0.1", port=self.port, query={})

    def stop(self) -> None:
        """Stop the pooler (SIGTERM, then SIGKILL after 5 s)."""
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def log(self) -> str:
        """What pgbouncer logged."""
        path = self.work_dir / "pgbouncer.log"
        return path.read_text() if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_pgbouncer(server: URL, passwords: dict[str, str], *, pool_size: int = 2) -> Pgbouncer:
    """Start pgbouncer (transaction mode) in front of `server` (any database on it).

    Its files live in a new directory of the system's temporary directory (readable by the
    unprivileged user it runs as when started by root); `stop()` deletes it.
    """
    executable = ensure_pgbouncer()
    work_dir = Path(tempfile.mkdtemp(prefix="tenantdocs-pgbouncer-"))
    host = server.query.get("host") or server.host or "127.0.0.1"
    port = _free_port()
    users = "".join(f'"{user}" "{password}"\n' for user, password in passwords.items())
    (work_dir / "userlist.txt").write_text(users)
    (work_dir / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={host} port={server.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {work_dir / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {work_dir / "pgbouncer.log"}
"""
    )
    # -q: nothing on stderr (it logs to its log file), so no pipe fills up.
    command = [executable, "-q", str(work_dir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", _UNPRIVILEGED_USER]
        account = pwd.getpwnam(_UNPRIVILEGED_USER)
        for path in [work_dir, *work_dir.iterdir()]:
            os.chown(path, account.pw_uid, account.pw_gid)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bouncer = Pgbouncer(process, port, work_dir)
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            raise AssertionError(f"pgbouncer exited {process.returncode}: {bouncer.log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return bouncer
        except OSError:
            assert time.monotonic() < deadline, f"pgbouncer did not listen: {bouncer.log()}"
            time.sleep(0.05)
