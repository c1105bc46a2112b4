"""Recognise "cannot connect to the database" and say it in one line: where, and why."""

from __future__ import annotations

import re

import psycopg
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

# Exit status of `run`, `migrate` and the admin CLI when the database cannot be reached
# (documented in the README next to the CLI's other exit codes).
EXIT_DATABASE_UNAVAILABLE = 3

# SQLSTATE classes a server answers with when it refuses the connection itself: connection
# exceptions, bad credentials, unknown database, and "starting up / shutting down".
# https://www.postgresql.org/docs/current/errcodes-appendix.html
_CONNECT_SQLSTATES = ("08", "28", "3D", "57P")

# libpq: 'connection to server at "h", port 5432 failed: Connection refused' -> the cause.
_LIBPQ_CAUSE = re.compile(r".*?connection to server (?:at|on) .*? failed: (?P<cause>.+)")


class DatabaseUnavailableError(RuntimeError):
    """The database could not be reached; the message names host:port and the cause."""


def database_address(url: URL | None) -> str:
    """`host:port` of `url` (or the Unix-socket directory), as an operator would look it up."""
    if url is None:
        return "the embedded server"
    host = url.host or url.query.get("host") or "localhost"
    if isinstance(host, tuple):  # a repeated ?host= query parameter
        host = ",".join(host)
    if host.startswith("/"):
        return f"socket {host}"
    return f"{host}:{url.port or 5432}"


def connection_failure_cause(error: BaseException) -> str | None:
    """The one-line cause if `error` is a failure to connect, otherwise None."""
    original = error.orig if isinstance(error, DBAPIError) else error
    if not isinstance(original, psycopg.OperationalError):
        return None
    sqlstate = original.sqlstate
    if sqlstate is not None and not sqlstate.startswith(_CONNECT_SQLSTATES):
        return None
    first_line = (str(original).strip().splitlines() or [type(original).__name__])[0]
    match = _LIBPQ_CAUSE.fullmatch(first_line)
    cause = match.group("cause") if match else first_line.removeprefix("connection failed: ")
    return cause.strip() or type(original).__name__


def describe_unavailable(url: URL | None, error: BaseException) -> str | None:
    """`cannot reach the database at host:port: cause`, or None if `error` is something else."""
    cause = connection_failure_cause(error)
    if cause is None:
        return None
    return f"cannot reach the database at {database_address(url)}: {cause}"
