"""What an engine's connections send the server, from libpq's own protocol trace.

SQLAlchemy's `before_cursor_execute` event does not see every message: a tenant
transaction's opening goes to psycopg directly (app.database.tenant_context.enter_tenant).
libpq's trace sees everything the client sends, so tests that count round trips or read the
statements sent use this instead.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg.pq import Trace
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

# A frontend message in libpq's trace (REGRESS_MODE, no timestamps): "F <length> <type> ...".
_SENT = re.compile(r"^F\t\d+\t(?P<kind>\w+)\t?(?P<rest>.*)$")
# The statement text of a simple Query or of an extended-protocol Parse.
_QUERY_TEXT = re.compile(r'^ "(?P<sql>.*)"$', re.DOTALL)
_PARSE_TEXT = re.compile(r'^ "[^"]*" "(?P<sql>.*)" \d+', re.DOTALL)


@dataclass
class ProtocolTrace:
    """The trace of one `traced()` block (read it after the block)."""

    path: Path
    lines: list[str] = field(default_factory=list)

    def round_trips(self) -> list[str]:
        """The client's messages that end a round trip: Sync (extended protocol), Query
        (simple), in order."""
        return [
            line
            for line in self.lines
            if (sent := _SENT.match(line)) and sent["kind"] in {"Sync", "Query"}
        ]

    def statements(self) -> list[str]:
        """The SQL text sent, in order: each simple Query's, and each Parse's (a statement
        psycopg has prepared already is sent without its text: Bind and Execute only)."""
        texts = []
        for line in self.lines:
            sent = _SENT.match(line)
            if sent is None:
                continue
            if sent["kind"] == "Query" and (query := _QUERY_TEXT.match(sent["rest"])):
                texts.append(query["sql"])
            elif sent["kind"] == "Parse" and (parse := _PARSE_TEXT.match(sent["rest"])):
                texts.append(parse["sql"])
        return texts


@contextmanager
def traced(engine: AsyncEngine) -> Iterator[ProtocolTrace]:
    """Trace every connection `engine` checks out inside the block (and only those)."""
    handle, name = tempfile.mkstemp(prefix="libpq-", suffix=".trace")
    trace = ProtocolTrace(Path(name))
    output = os.fdopen(handle, "w")

    def on_checkout(_dbapi: Any, record: Any, _proxy: Any) -> None:
        pgconn = record.driver_connection.pgconn
        pgconn.trace(os.dup(output.fileno()))
        pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)

    def on_checkin(_dbapi: Any, record: Any) -> None:
        if record.driver_connection is not None:
            record.driver_connection.pgconn.untrace()

    sync_engine = engine.sync_engine
    event.listen(sync_engine, "checkout", on_checkout)
    event.listen(sync_engine, "checkin", on_checkin)
    try:
        yield trace
    finally:
        event.remove(sync_engine, "checkout", on_checkout)
        event.remove(sync_engine, "checkin", on_checkin)
        output.close()
        trace.lines = trace.path.read_text().splitlines()
        trace.path.unlink()
