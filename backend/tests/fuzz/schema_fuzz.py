"""schemathesis's stateful (links) phase against the app served by uvicorn on 127.0.0.1.

Every response is checked for 5xx, for a status code the OpenAPI document does not list, for
a content type and a body that do not match the documented schema. Failures are collected
(not raised), so one run reports all of them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import schemathesis
import uvicorn
from hypothesis import HealthCheck
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import Settings
from app.main import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class SchemaFuzzResult:
    """What the stateful run did and found."""

    calls: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)
    links: int = 0
    server_errors: list[str] = field(default_factory=list)
    schema_violations: list[str] = field(default_factory=list)
    duration: float = 0.0
    stopped_early: bool = False

    @property
    def ok(self) -> bool:
        """No 5xx and no response outside the documented schema."""
        return self.calls > 0 and not self.server_errors and not self.schema_violations

    def summary(self) -> str:
        """The lines `make fuzz` prints."""
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        lines = [
            f"schemathesis stateful phase: {self.calls} calls over {len(self.operations)}"
            f" operations, {self.links} links, {self.duration:.1f}s"
            + (
                " (some rounds stopped early: the app's state made a Hypothesis replay differ)"
                if self.stopped_early
                else ""
            ),
            f"statuses: {statuses}",
            f"5xx: {len(self.server_errors)}   responses breaking the documented schema:"
            f" {len(self.schema_violations)}",
        ]
        lines.extend(f"  5xx: {line}" for line in self.server_errors[:10])
        lines.extend(f"  schema: {line}" for line in self.schema_violations[:10])
        return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Server:
    """uvicorn in a thread: the app opens its own database pool in its lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.port = _free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="critical"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the app did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def run(
    settings: Settings, headers: dict[str, str], *, examples: int, min_calls: int = 500
) -> SchemaFuzzResult:
    """Run `examples` stateful scenarios (more rounds until `min_calls`) as `headers`' caller."""
    result = SchemaFuzzResult()
    started = time.monotonic()
    with _Server(settings) as base_url:
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        base_machine: Any = schema.as_state_machine()
        transitions = base_machine._transitions.operations
        result.links = sum(len(t.outgoing) for t in transitions.values())

        class AuthenticatedStateMachine(base_machine):  # type: ignore[misc, valid-type]
            def get_call_kwargs(self, case: Any) -> dict[str, Any]:
                return {"headers": headers, "base_url": base_url}

            def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
                label = f"{case.method} {case.formatted_path} -> {response.status_code}"
                result.calls += 1
                result.statuses[response.status_code] += 1
                result.operations[f"{case.method} {case.path}"] += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except (FailureGroup, AssertionError) as failure:
                    problems = getattr(failure, "exceptions", [failure])
                    titles = "; ".join(
                        f"{getattr(p, 'title', '')}: {getattr(p, 'message', str(p))}"[:400]
                        for p in problems
                    )
                    text = f"{label}: {titles} | body: {response.text[:200]!r}"
                    if response.status_code >= 500:
                        result.server_errors.append(text)
                    else:
                        result.schema_violations.append(text)

        # The app's state changes between scenarios, so Hypothesis may refuse to replay one
        # and stop; what ran until then was checked, and a new round carries on.
        for _round in range(5):
            try:
                _run(AuthenticatedStateMachine, examples)
            except hypothesis.errors.FlakyStrategyDefinition:
                result.stopped_early = True
            if result.calls >= min_calls:
                break
    result.duration = time.monotonic() - started
    return result


def _run(machine: Any, examples: int) -> None:
    machine.run(
        settings=hypothesis.settings(
            max_examples=examples,
            stateful_step_count=8,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate],
        ),
    )
