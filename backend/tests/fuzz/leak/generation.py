"""Generation: the seeded list of symbolic operations (which kind, which tenant, which target)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from app.database.vector_search import EMBEDDING_DIMENSIONS

API = "/api/v1"
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SEEDED_DOCUMENTS = 3
EMBEDDING_VOCABULARY = 48
DEPARTMENTS = ("cardiology", "oncology", "radiology")
CONTENT_TYPES = ("application/pdf", "text/plain")
STATUSES = ("processing", "completed", "failed")
HOSTILE_KEY = "x' OR '1'='1 --"
HOSTILE_VALUE = '$.** ? (@ like_regex ".*")'
MASS_ASSIGNED = ("id", "tenant_id", "user_id", "deleted_at", "created_at", "status")
DISTANCE_TOLERANCE = 1e-4

# Relative weights of the operation kinds.
KINDS: dict[str, int] = {
    "create_document": 14,
    "get_document": 12,
    "list_documents": 10,
    "search": 8,
    "update_document": 10,
    "delete_document": 6,
    "restore_document": 5,
    "create_user": 4,
    "delete_user": 3,
    "restore_user": 2,
    "get_user": 3,
    "list_users": 3,
    "read_audit": 4,
    "forged_cursor": 3,
    "me": 2,
}


# The operations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One operation, with symbolic references resolved against the model when it runs."""

    index: int
    kind: str
    tenant: int
    caller: int  # 0: the tenant's first admin; otherwise an index into its users
    channel: str  # "http" or "service"
    args: dict[str, Any] = field(default_factory=dict, hash=False)

    def describe(self) -> str:
        """One line for a failure report."""
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.args.items()))
        return (
            f"#{self.index} {self.kind} tenant={self.tenant} caller={self.caller}"
            f" via {self.channel} ({args})"
        )


def _target(rng: random.Random, hostile: float = 0.25) -> tuple[Any, ...]:
    roll = rng.random()
    if roll < hostile * 0.8:
        return ("foreign", rng.randrange(1000), rng.randrange(SEEDED_DOCUMENTS))
    if roll < hostile:
        return ("random",)
    return ("own", rng.randrange(1000))


def _metadata(rng: random.Random) -> dict[str, Any]:
    metadata: dict[str, Any] = {"dept": rng.choice(DEPARTMENTS), "n": rng.randrange(3)}
    if rng.random() < 0.1:
        metadata[HOSTILE_KEY] = HOSTILE_VALUE
    return metadata


def _filter(rng: random.Random) -> dict[str, Any] | None:
    roll = rng.random()
    if roll < 0.4:
        return None
    if roll < 0.7:
        return {"dept": rng.choice(DEPARTMENTS)}
    if roll < 0.9:
        return {"dept": rng.choice(DEPARTMENTS), "n": rng.randrange(3)}
    return {HOSTILE_KEY: HOSTILE_VALUE}


def generate(seed: int, count: int, tenants: int) -> list[Op]:
    """`count` operations over `tenants` tenants, all drawn from `seed`."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    weights = [KINDS[kind] for kind in kinds]
    ops = []
    for index in range(count):
        kind = rng.choices(kinds, weights)[0]
        args: dict[str, Any] = {}
        if kind == "create_document":
            args = {
                "content_type": rng.choice(CONTENT_TYPES),
                "metadata": _metadata(rng),
                "embedding": rng.randrange(EMBEDDING_VOCABULARY) if rng.random() < 0.7 else None,
            }
            if rng.random() < 0.1:
                args["mass_assign"] = rng.choice(MASS_ASSIGNED)
        elif kind == "get_document":
            args = {"target": _target(rng), "include_deleted": rng.random() < 0.2}
        elif kind == "list_documents":
            args = {
                "status": rng.choice((None, None, *STATUSES)),
                "content_type": rng.choice((None, None, *CONTENT_TYPES)),
                "metadata": _filter(rng),
                "include_deleted": rng.random() < 0.2,
                "limit": rng.randint(1, 8),
            }
        elif kind == "search":
            args = {
                "embedding": rng.randrange(EMBEDDING_VOCABULARY),
                "k": rng.randint(1, 12),
                "status": rng.choice((None, None, None, *STATUSES)),
                "metadata": _filter(rng),
            }
        elif kind == "update_document":
            fields: dict[str, Any] = {}
            if rng.random() < 0.6:
                fields["status"] = rng.choice(STATUSES)
            if rng.random() < 0.4:
                fields["metadata"] = _metadata(rng)
            if rng.random() < 0.3:
                fields["embedding"] = (
                    rng.randrange(EMBEDDING_VOCABULARY) if rng.random() < 0.8 else None
                )
            if not fields:
                fields["status"] = rng.choice(STATUSES)
            args = {"target": _target(rng), "fields": fields}
            if rng.random() < 0.1:
                args["mass_assign"] = rng.choice((*MASS_ASSIGNED[:-1], "status"))
        elif kind in ("delete_document", "restore_document"):
            args = {"target": _target(rng)}
        elif kind == "create_user":
            args = {
                "email": rng.choice(("new", "new", "new", "own_duplicate", "foreign_duplicate")),
                "role": rng.choice(("admin", "member", "member")),
                "mass_assign": rng.random() < 0.1,
            }
        elif kind in ("delete_user", "restore_user", "get_user"):
            args = {"target": _target(rng, hostile=0.3)}
            if kind == "get_user":
                args["include_deleted"] = rng.random() < 0.2
        elif kind == "list_users":
            args = {"include_deleted": rng.random() < 0.3, "limit": rng.randint(1, 5)}
        elif kind == "read_audit":
            args = {"by_resource": _target(rng) if rng.random() < 0.4 else None}
        elif kind == "forged_cursor":
            args = {"how": rng.choice(("foreign", "tampered", "garbage"))}
        caller = 0 if rng.random() < 0.55 else rng.randrange(1, 1000)
        ops.append(
            Op(
                index=index,
                kind=kind,
                tenant=rng.randrange(tenants),
                caller=caller,
                channel="http" if rng.random() < 0.6 else "service",
                args=args,
            )
        )
    return ops


@lru_cache(maxsize=EMBEDDING_VOCABULARY)
def embedding(seed: int) -> tuple[float, ...]:
    """The embedding numbered `seed` (a fixed random direction, 4 decimals)."""
    rng = random.Random(seed * 7919 + 1)
    return tuple(round(rng.gauss(0, 1), 4) for _ in range(EMBEDDING_DIMENSIONS))


@lru_cache(maxsize=EMBEDDING_VOCABULARY)
def unit_vector(seed: int) -> Any:
    vector = np.asarray(embedding(seed), dtype=np.float32).astype(np.float64)
    return vector / np.linalg.norm(vector)


# The reference model ---------------------------------------------------------------------
