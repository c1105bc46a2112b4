"""The model: what each tenant holds, as the fuzzer expects it, and the failures found."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.fuzz.leak.generation import KINDS, Op


@dataclass
class DocState:
    """What the model knows of a document."""

    id: uuid.UUID
    created_at: datetime
    user_id: uuid.UUID
    content_type: str
    status: str
    metadata: dict[str, Any]
    embedding: int | None
    deleted: bool = False


@dataclass
class UserState:
    """What the model knows of a user."""

    id: uuid.UUID
    created_at: datetime
    email: str
    subject: str
    role: str
    deleted: bool = False


@dataclass
class TenantState:
    """One tenant as the model sees it."""

    index: int
    id: uuid.UUID
    users: list[UserState]
    documents: list[DocState]
    audit: Counter[tuple[str, str, uuid.UUID | None]] = field(default_factory=Counter)
    cursors: list[str] = field(default_factory=list)
    created_users: int = 0


@dataclass(frozen=True)
class Failure:
    """A check that did not hold."""

    kind: str  # leak, 5xx, mismatch, final-state
    op: int | None
    message: str


@dataclass
class Report:
    """What a run did and found."""

    seed: int
    operations: int
    tenants: int
    concurrency: int
    ops_by_kind: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    duration: float = 0.0
    shrunk: list[Op] | None = None
    shrink_note: str = ""
    incomplete_searches: int = 0

    @property
    def leaks(self) -> int:
        """Responses that carried another tenant's id, or wrote into another tenant."""
        return sum(1 for failure in self.failures if failure.kind == "leak")

    @property
    def server_errors(self) -> int:
        """5xx answers (or unexpected exceptions in the service layer)."""
        return sum(1 for failure in self.failures if failure.kind == "5xx")

    def summary(self) -> str:
        """The human-readable summary `make fuzz` prints."""
        lines = [
            f"leak fuzz: seed={self.seed} operations={self.operations} tenants={self.tenants}"
            f" concurrency={self.concurrency} duration={self.duration:.1f}s"
            f" ({self.operations / max(self.duration, 1e-9):.0f} ops/s)",
            "operations by kind (http/service):",
        ]
        for kind in KINDS:
            http, service = self.ops_by_kind[f"{kind}/http"], self.ops_by_kind[f"{kind}/service"]
            lines.append(f"  {kind:<18} {http + service:>6}  ({http}/{service})")
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        lines.append(f"statuses: {statuses}")
        searches = self.ops_by_kind["search/http"] + self.ops_by_kind["search/service"]
        lines.append(
            f"searches with fewer hits than the tenant has (shared HNSW index scanned before"
            f" RLS; not a leak): {self.incomplete_searches} of {searches}"
        )
        lines.append(
            f"leaks: {self.leaks}   5xx: {self.server_errors}   other failures:"
            f" {len(self.failures) - self.leaks - self.server_errors}"
        )
        for failure in self.failures[:10]:
            lines.append(f"  FAIL [{failure.kind}] op #{failure.op}: {failure.message}")
        if self.failures:
            lines.append(
                f"reproduce with: --seed {self.seed} --ops {self.operations}"
                f" --tenants {self.tenants}"
            )
        if self.shrunk is not None:
            lines.append(
                f"shortest reproducing sequence ({len(self.shrunk)} operations,"
                f" replayed sequentially on fresh tenants){self.shrink_note}:"
            )
            lines.extend(f"  {op.describe()}" for op in self.shrunk)
        elif self.shrink_note:
            lines.append(self.shrink_note)
        return "\n".join(lines)


def first_difference(a: list[str], b: list[str]) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def position(document: DocState) -> Any:
    from app.services.pagination import Position

    return Position(document.created_at, document.id)
