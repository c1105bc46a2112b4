"""Per-installation development secrets, created once in a file only the owner can read.

The dev issuer's signing key and the dev cursor secret live under the git-ignored
`backend/.data/`: each installation makes its own on first use, so no secret is a constant
anyone could read in the source. Production takes its secrets from settings instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """The bytes at `path`; the first time, `make()` them and write them with mode 0600.

    Safe against a concurrent first start: the file appears whole or not at all, and when two
    processes race, the first one's secret wins and both read it.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(make())
        try:
            # link() fails if another process created the file meanwhile: theirs wins.
            os.link(staging, path)
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    return path.read_bytes()
