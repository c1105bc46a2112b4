"""A seeded, model-based leak fuzzer: random operations by many tenants, checked against a model.

Operations (create, read, list with filters, search, update, soft delete, restore, user admin,
audit reads, and hostile variants: foreign ids, forged cursors, mass-assigned fields) are
generated up front from a seed, as symbolic references ("the 3rd document of tenant 7"), so the
same list replays on a fresh set of tenants. They run through HTTP (the real app over ASGI) and
through the service layer (direct service calls in tenant transactions), `concurrency` at a time
over a small pool. Operations of one tenant run in list order (so the model is exact), those of
different tenants concurrently. Every response is checked against the model: no id of another
tenant ever appears, lists and searches equal the model's expectation, foreign and deleted ids
are 404, member admin operations 403, nothing is a 5xx. At the end the database (read as the
provisioning role) must equal the model. A failure is shrunk (delta debugging over the recorded
operations, replayed sequentially on fresh tenants) and reported with the seed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import httpx
import numpy as np
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.deps import require_admin
from app.auth.tokens import VerifiedIdentity
from app.core.config import Settings
from app.core.context import RequestContext
from app.core.errors import AppError
from app.core.lookalikes import skeleton
from app.database import Database
from app.database.session import admin_transaction, tenant_transaction
from app.main import create_app
from app.models import AuditLog, Document, User
from app.models.document import EMBEDDING_DIMENSIONS
from app.schemas import audit_log as audit_schemas
from app.schemas import document as document_schemas
from app.schemas import user as user_schemas
from app.services import audit_logs as audit_logs_service
from app.services import callers as callers_service
from app.services import documents as documents_service
from app.services import users as users_service
from app.services.audit import AuditActor
from app.services.pagination import CursorCodec, PageRequest
from app.services.vector_search import SearchFilters
from tests.auth_helpers import TestIssuer
from tests.factories import make_document, make_tenant, make_user

API = "/api/v1"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
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
def _unit(seed: int) -> Any:
    vector = np.asarray(embedding(seed), dtype=np.float32).astype(np.float64)
    return vector / np.linalg.norm(vector)


# The reference model ---------------------------------------------------------------------


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


@dataclass
class FuzzEnvironment:
    """What the fuzzer runs against: settings, the app's database, provisioning, the issuer."""

    settings: Settings
    database: Database  # the runtime pool the app and the service calls share
    admin_sessions: async_sessionmaker[AsyncSession]
    issuer: TestIssuer


class _AnswerWithRollbackError(Exception):
    """Carries a service-layer answer out of the transaction (which it rolls back)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


# The fuzzer --------------------------------------------------------------------------------


class LeakFuzzer:
    """Runs a list of operations against fresh tenants and checks every answer."""

    def __init__(
        self, env: FuzzEnvironment, tenants: int, concurrency: int, *, strict_search: bool = False
    ) -> None:
        self.env = env
        self.strict_search = strict_search
        self.incomplete_searches = 0
        self.tenant_count = tenants
        self.concurrency = concurrency
        self.tenants: list[TenantState] = []
        self.owner: dict[uuid.UUID, int] = {}
        self.failures: list[Failure] = []
        self.statuses: Counter[int] = Counter()
        self.ops_by_kind: Counter[str] = Counter()
        self.codec = CursorCodec(env.settings.cursor_secret)
        self._tokens: dict[uuid.UUID, dict[str, str]] = {}
        self._run_label = uuid.uuid4().hex[:6]
        self.http: httpx.AsyncClient | None = None

    # Set-up ---------------------------------------------------------------------------------

    async def provision(self) -> None:
        """Fresh tenants, each with an admin, a member and a few documents."""
        async with admin_transaction(self.env.admin_sessions) as session:
            for index in range(self.tenant_count):
                tenant = await make_tenant(session, name=f"fuzz-{self._run_label}-{index}")
                users = []
                rows = []
                for role in ("admin", "member"):
                    user = await make_user(
                        session,
                        tenant,
                        email=f"{role}-{index}@fuzz.example.org",
                        role=role,
                        external_idp_id=f"fuzz-{uuid.uuid4().hex}",
                    )
                    rows.append(user)
                    users.append(
                        UserState(
                            user.id,
                            user.created_at,
                            user.email,
                            str(user.external_idp_id),
                            role,
                        )
                    )
                documents = []
                for number in range(SEEDED_DOCUMENTS):
                    metadata = {"dept": DEPARTMENTS[number], "n": number}
                    seed = (index * SEEDED_DOCUMENTS + number) % EMBEDDING_VOCABULARY
                    vector = list(embedding(seed)) if number < 2 else None
                    row = await make_document(
                        session,
                        rows[0],
                        content_type=CONTENT_TYPES[number % 2],
                        metadata_=metadata,
                        embedding_vector=vector,
                    )
                    documents.append(
                        DocState(
                            row.id,
                            row.created_at,
                            users[0].id,
                            row.content_type,
                            "processing",
                            metadata,
                            seed if vector is not None else None,
                        )
                    )
                state = TenantState(index, tenant.id, users, documents)
                self.tenants.append(state)
        for state in self.tenants:
            self.owner[state.id] = state.index
            for user_state in state.users:
                self.owner[user_state.id] = state.index
            for document in state.documents:
                self.owner[document.id] = state.index

    def _headers(self, user: UserState, tenant: TenantState) -> dict[str, str]:
        headers = self._tokens.get(user.id)
        if headers is None:
            token = self.env.issuer.mint(
                tenant_id=tenant.id, subject=user.subject, exp=int(time.time()) + 6 * 3600
            )
            headers = {"Authorization": f"Bearer {token}"}
            self._tokens[user.id] = headers
        return headers

    # Running --------------------------------------------------------------------------------

    async def run(self, ops: Sequence[Op]) -> None:
        """Run `ops`: one tenant's in order, different tenants' concurrently."""
        app = create_app(self.env.settings, self.env.database)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as http:
            self.http = http
            queues: dict[int, list[Op]] = {}
            for op in ops:
                queues.setdefault(op.tenant % self.tenant_count, []).append(op)
            for queue in queues.values():
                queue.reverse()  # pop() from the end = list order
            busy: set[int] = set()
            ready = asyncio.Condition()

            async def worker() -> None:
                while True:
                    async with ready:
                        while True:
                            free = [t for t, q in queues.items() if q and t not in busy]
                            if free or not any(queues.values()):
                                break
                            await ready.wait()
                        if not free:
                            return
                        tenant = min(free, key=lambda t: queues[t][-1].index)
                        op = queues[tenant].pop()
                        busy.add(tenant)
                    try:
                        await self.execute(op)
                    finally:
                        async with ready:
                            busy.discard(tenant)
                            ready.notify_all()

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        self.http = None

    async def execute(self, op: Op) -> None:
        """Run one operation and check its answer against the model."""
        tenant = self.tenants[op.tenant % self.tenant_count]
        caller = self._caller(tenant, op.caller)
        self.ops_by_kind[f"{op.kind}/{op.channel}"] += 1
        handler: Callable[[Op, TenantState, UserState], Awaitable[None]] = getattr(
            self, f"_op_{op.kind}"
        )
        try:
            await handler(op, tenant, caller)
        except Exception as exc:  # a crash in the fuzzer or the service layer is a finding
            self._fail("5xx", op, f"{type(exc).__name__}: {exc}")

    def _caller(self, tenant: TenantState, ref: int) -> UserState:
        if ref == 0:
            return tenant.users[0]
        return tenant.users[ref % len(tenant.users)]

    def _fail(self, kind: str, op: Op | None, message: str) -> None:
        self.failures.append(Failure(kind, op.index if op else None, message[:500]))

    # Calling the two channels -----------------------------------------------------------------

    async def _call(
        self,
        op: Op,
        tenant: TenantState,
        caller: UserState,
        request: tuple[str, str, dict[str, Any] | None, Any],
        service: Callable[[AsyncSession, RequestContext], Awaitable[tuple[int, Any]]],
        *,
        sent_ids: Sequence[uuid.UUID] = (),
    ) -> tuple[int, Any]:
        """Run the operation over HTTP or in the service layer; check for leaks and 5xx."""
        if op.channel == "http":
            assert self.http is not None
            method, path, params, body = request
            response = await self.http.request(
                method, API + path, params=params, json=body, headers=self._headers(caller, tenant)
            )
            status = response.status_code
            text = response.text
            payload = response.json() if text else None
        else:
            status, payload = await self._service(tenant, caller, service)
            text = json.dumps(payload, default=str)
        self.statuses[status] += 1
        if status >= 500:
            self._fail("5xx", op, f"{status}: {text[:300]}")
        self._scan_for_leaks(op, tenant, text, status, sent_ids)
        return status, payload

    async def _service(
        self,
        tenant: TenantState,
        caller: UserState,
        work: Callable[[AsyncSession, RequestContext], Awaitable[tuple[int, Any]]],
    ) -> tuple[int, Any]:
        """What the routers do, minus HTTP: one tenant transaction, the caller resolved in it."""
        try:
            async with tenant_transaction(self.env.database.sessions, tenant.id) as session:
                identity = VerifiedIdentity(tenant_id=tenant.id, subject=caller.subject)
                resolved = await callers_service.resolve_caller(session, identity)
                context = RequestContext(
                    tenant_id=resolved.tenant_id,
                    user_id=resolved.user_id,
                    user_role=resolved.role,
                    request_id=None,
                    client_ip="127.0.0.1",
                    user_agent="leak-fuzz",
                )
                status, body = await work(session, context)
                if status >= 400:
                    raise _AnswerWithRollbackError(
                        status, body
                    )  # roll back, as an error response does
                return status, body
        except _AnswerWithRollbackError as outcome:
            return outcome.status, outcome.body
        except AppError as exc:
            return exc.status_code, {"error": {"code": exc.code, "message": exc.message}}
        except ValidationError as exc:
            # Like the API's handler: where and what, never the input (it may be a foreign id).
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                for e in exc.errors(include_input=False)
            )
            return 422, {"error": {"code": "validation_error", "message": problems}}

    def _scan_for_leaks(
        self, op: Op, tenant: TenantState, text: str, status: int, sent: Sequence[uuid.UUID]
    ) -> None:
        for match in set(_UUID.findall(text)):
            found = uuid.UUID(match)
            owner = self.owner.get(found)
            if owner is None or owner == tenant.index:
                continue
            if status >= 400 and found in sent:
                continue  # an error echoing the id the caller sent reveals nothing
            self._fail("leak", op, f"answer ({status}) carries tenant {owner}'s id {found}")

    def _expect(self, op: Op, status: int, expected: int, payload: Any) -> bool:
        if status != expected:
            if status < 500:
                self._fail("mismatch", op, f"expected {expected}, got {status}: {payload!r:.300}")
            return False
        return True

    # Resolving symbolic references --------------------------------------------------------------

    def _foreign(self, tenant: TenantState, offset: int) -> TenantState:
        others = self.tenant_count - 1
        return self.tenants[(tenant.index + 1 + offset % others) % self.tenant_count]

    def _document(
        self, tenant: TenantState, target: tuple[Any, ...]
    ) -> tuple[uuid.UUID, DocState | None]:
        if target[0] == "own":
            document = tenant.documents[target[1] % len(tenant.documents)]
            return document.id, document
        if target[0] == "foreign":
            return self._foreign(tenant, target[1]).documents[target[2]].id, None
        return uuid.uuid4(), None

    def _user(
        self, tenant: TenantState, target: tuple[Any, ...], caller: UserState | None = None
    ) -> tuple[uuid.UUID, UserState | None]:
        if target[0] == "own":
            candidates = [u for u in tenant.users[1:] if caller is None or u.id != caller.id]
            if not candidates:
                return uuid.uuid4(), None
            user = candidates[target[1] % len(candidates)]
            return user.id, user
        if target[0] == "foreign":
            foreign = self._foreign(tenant, target[1])
            return foreign.users[target[2] % 2].id, None
        return uuid.uuid4(), None

    def _audit(
        self, tenant: TenantState, action: str, resource: uuid.UUID, user: UserState
    ) -> None:
        tenant.audit[(action, str(resource), user.id)] += 1

    # Checks of returned rows ------------------------------------------------------------------

    def _check_document(self, op: Op, body: Any, document: DocState) -> None:
        expected = {
            "id": str(document.id),
            "user_id": str(document.user_id),
            "content_type": document.content_type,
            "status": document.status,
            "metadata": document.metadata,
            "has_embedding": document.embedding is not None,
            "deleted": document.deleted,
        }
        actual = {key: body.get(key) for key in expected if key != "deleted"}
        actual["deleted"] = body.get("deleted_at") is not None
        if actual != expected:
            self._fail("mismatch", op, f"document differs from the model: {actual} != {expected}")

    def _document_payload(self, document: Document) -> dict[str, Any]:
        return document_schemas.Document.model_validate(document).model_dump(mode="json")

    # Documents --------------------------------------------------------------------------------

    async def _op_create_document(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        body: dict[str, Any] = {
            "filename": f"f-{op.index}.pdf",
            "content_type": op.args["content_type"],
            "size_bytes": 100 + op.index,
            "s3_bucket": "fuzz",
            "s3_key": f"{tenant.index}/{op.index}",
            "metadata": op.args["metadata"],
        }
        if op.args["embedding"] is not None:
            body["embedding"] = list(embedding(op.args["embedding"]))
        mass = op.args.get("mass_assign")
        if mass:
            foreign = self._foreign(tenant, op.index)
            body[mass] = {
                "id": str(uuid.uuid4()),
                "tenant_id": str(foreign.id),
                "user_id": str(foreign.users[0].id),
                "deleted_at": "2020-01-01T00:00:00Z",
                "created_at": "2020-01-01T00:00:00Z",
                "status": "completed",
            }[mass]
        expected = 403 if caller.deleted else 422 if mass else 201

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            data = document_schemas.DocumentCreate.model_validate(body)
            created = await documents_service.create_document(session, context, data)
            return 201, self._document_payload(created)

        status, payload = await self._call(
            op, tenant, caller, ("POST", "/documents", None, body), service
        )
        if not self._expect(op, status, expected, payload) or status != 201:
            return
        document = DocState(
            uuid.UUID(payload["id"]),
            datetime.fromisoformat(payload["created_at"]),
            caller.id,
            op.args["content_type"],
            "processing",
            op.args["metadata"],
            op.args["embedding"],
        )
        self._check_document(op, payload, document)
        tenant.documents.append(document)
        self.owner[document.id] = tenant.index
        self._audit(tenant, "document.create", document.id, caller)

    async def _op_get_document(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        target_id, document = self._document(tenant, op.args["target"])
        include_deleted = op.args["include_deleted"]
        if caller.deleted or (include_deleted and caller.role != "admin"):
            expected = 403
        elif document is None or (document.deleted and not include_deleted):
            expected = 404
        else:
            expected = 200

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            if include_deleted:
                require_admin(context)
            found = await documents_service.get_document(
                session, context, target_id, include_deleted=include_deleted
            )
            if self.env.settings.AUDIT_DOCUMENT_READS:
                await documents_service.record_read(session, context, found.id)
            return 200, self._document_payload(found)

        params = {"include_deleted": "true"} if include_deleted else None
        status, payload = await self._call(
            op,
            tenant,
            caller,
            ("GET", f"/documents/{target_id}", params, None),
            service,
            sent_ids=[target_id],
        )
        if self._expect(op, status, expected, payload) and status == 200 and document:
            self._check_document(op, payload, document)
            if self.env.settings.AUDIT_DOCUMENT_READS:
                self._audit(tenant, "document.read", document.id, caller)

    def _matches(self, document: DocState, status: Any, content_type: Any, metadata: Any) -> bool:
        if status is not None and document.status != status:
            return False
        if content_type is not None and document.content_type != content_type:
            return False
        return not metadata or all(document.metadata.get(k) == v for k, v in metadata.items())

    def _list_params(self, args: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": args["limit"]}
        for name in ("status", "content_type"):
            if args[name] is not None:
                params[name] = args[name]
        if args["metadata"] is not None:
            params["metadata"] = json.dumps(args["metadata"])
        if args["include_deleted"]:
            params["include_deleted"] = "true"
        return params

    def _document_query(self, args: dict[str, Any]) -> documents_service.DocumentQuery:
        return documents_service.DocumentQuery(
            status=args["status"],
            content_type=args["content_type"],
            metadata_contains=args["metadata"],
            include_deleted=args["include_deleted"],
        )

    async def _op_list_documents(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        args = op.args
        if caller.deleted or (args["include_deleted"] and caller.role != "admin"):
            expected_status = 403
        else:
            expected_status = 200
        wanted = sorted(
            (
                d
                for d in tenant.documents
                if (args["include_deleted"] or not d.deleted)
                and self._matches(d, args["status"], args["content_type"], args["metadata"])
            ),
            key=lambda d: (d.created_at, d.id),
            reverse=True,
        )
        seen: list[str] = []
        cursor: str | None = None
        for _page in range(len(wanted) // args["limit"] + 2):
            params = self._list_params(args)
            if cursor:
                params["cursor"] = cursor
            page = PageRequest(cursor=cursor, limit=args["limit"])

            async def service(
                session: AsyncSession, context: RequestContext, page: PageRequest = page
            ) -> tuple[int, Any]:
                if args["include_deleted"]:
                    require_admin(context)
                rows, next_cursor = await documents_service.list_documents(
                    session, context, self._document_query(args), page, self.codec
                )
                items = [self._document_payload(row) for row in rows]
                return 200, {"items": items, "next_cursor": next_cursor}

            status, payload = await self._call(
                op, tenant, caller, ("GET", "/documents", params, None), service
            )
            if not self._expect(op, status, expected_status, payload) or status != 200:
                return
            if len(payload["items"]) > args["limit"]:
                self._fail("mismatch", op, "page longer than its limit")
            seen.extend(item["id"] for item in payload["items"])
            cursor = payload["next_cursor"]
            if cursor:
                tenant.cursors.append(cursor)
                del tenant.cursors[:-5]
            else:
                break
        expected_ids = [str(d.id) for d in wanted]
        if seen != expected_ids:
            self._fail(
                "mismatch",
                op,
                f"listed {len(seen)} ids, model expects {len(expected_ids)}"
                f" (first difference at {_first_difference(seen, expected_ids)})",
            )

    async def _op_forged_cursor(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        how = op.args["how"]
        if how == "foreign":
            others = [t for t in self.tenants if t.cursors and t is not tenant]
            cursor = others[op.index % len(others)].cursors[-1] if others else None
            if cursor is None:  # no other tenant has paginated yet: forge one for a foreign row
                foreign = self._foreign(tenant, op.index)
                document = foreign.documents[0]
                from app.services.pagination import Position

                cursor = self.codec.encode(
                    Position(document.created_at, document.id),
                    foreign.id,
                    self._document_query(self._plain_list()).fingerprint(),
                )
        elif how == "tampered":
            own = self.codec.encode(
                _position(tenant.documents[0]),
                tenant.id,
                self._document_query(self._plain_list()).fingerprint(),
            )
            raw = bytearray(base64.urlsafe_b64decode(own + "=" * (-len(own) % 4)))
            raw[op.index % (len(raw) - 16)] ^= 0x04
            cursor = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
        else:
            cursor = base64.urlsafe_b64encode(f"garbage-{op.index}".encode()).decode()
        expected = 403 if caller.deleted else 422
        page = PageRequest(cursor=cursor, limit=5)

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            rows, _ = await documents_service.list_documents(
                session, context, self._document_query(self._plain_list()), page, self.codec
            )
            return 200, {"items": [self._document_payload(row) for row in rows]}

        status, payload = await self._call(
            op, tenant, caller, ("GET", "/documents", {"cursor": cursor, "limit": 5}, None), service
        )
        self._expect(op, status, expected, payload)

    @staticmethod
    def _plain_list() -> dict[str, Any]:
        return {"status": None, "content_type": None, "metadata": None, "include_deleted": False}

    async def _op_search(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        args = op.args
        query = _unit(args["embedding"])
        candidates = [
            d
            for d in tenant.documents
            if not d.deleted
            and d.embedding is not None
            and self._matches(d, args["status"], None, args["metadata"])
        ]
        ranked = sorted(
            (
                (1.0 - float(np.dot(query, _unit(d.embedding))), d)
                for d in candidates
                if d.embedding is not None
            ),
            key=lambda pair: (pair[0], pair[1].id),
        )[: args["k"]]
        body: dict[str, Any] = {"embedding": list(embedding(args["embedding"])), "k": args["k"]}
        filters: dict[str, Any] = {}
        if args["status"] is not None:
            filters["status"] = args["status"]
        if args["metadata"] is not None:
            filters["metadata"] = args["metadata"]
        if filters:
            body["filters"] = filters

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            request = document_schemas.SearchRequest.model_validate(body)
            search_filters = None
            if request.filters is not None:
                search_filters = SearchFilters(
                    status=request.filters.status,
                    content_type=request.filters.content_type,
                    metadata_contains=request.filters.metadata or {},
                )
            hits = await documents_service.search_documents(
                session, request.embedding, request.k, search_filters
            )
            items = [
                {"document": self._document_payload(hit.document), "distance": hit.distance}
                for hit in hits
            ]
            return 200, {"items": items}

        status, payload = await self._call(
            op, tenant, caller, ("POST", "/documents/search", None, body), service
        )
        expected = 403 if caller.deleted else 200
        if not self._expect(op, status, expected, payload) or status != 200:
            return
        got = [(hit["distance"], hit["document"]["id"]) for hit in payload["items"]]
        want = [(distance, str(d.id)) for distance, d in ranked]
        if [g[1] for g in got] == [w[1] for w in want]:
            return
        model_distance = {
            str(d.id): 1.0 - float(np.dot(query, _unit(d.embedding)))
            for d in candidates
            if d.embedding is not None
        }
        # Every hit must be one of the caller's matching documents, at the right distance,
        # nearest first: anything else is a wrong answer.
        for distance, document_id in got:
            if document_id not in model_distance:
                self._fail("mismatch", op, f"search returned {document_id}, not a candidate")
                return
            if abs(model_distance[document_id] - distance) > DISTANCE_TOLERANCE:
                self._fail("mismatch", op, f"search distance of {document_id} is wrong")
                return
        if any(a[0] > b[0] + DISTANCE_TOLERANCE for a, b in itertools.pairwise(got)):
            self._fail("mismatch", op, "search hits are not nearest first")
            return
        same_distances = len(got) == len(want) and all(
            abs(g[0] - w[0]) <= DISTANCE_TOLERANCE for g, w in zip(got, want, strict=True)
        )
        if same_distances:
            return  # ties ordered differently within float32 rounding
        # Fewer or farther hits than the tenant has: the shared HNSW index is scanned before
        # RLS filters other tenants' rows out (a known limitation; see SECURITY.md).
        self.incomplete_searches += 1
        if self.strict_search:
            self._fail(
                "mismatch", op, f"search returned {len(got)} hits, the tenant has {len(want)}"
            )

    def _update_body(self, op: Op, tenant: TenantState) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for name, value in op.args["fields"].items():
            if name == "embedding":
                body[name] = list(embedding(value)) if value is not None else None
            else:
                body[name] = value
        mass = op.args.get("mass_assign")
        if mass == "status":
            body["status"] = "archived"  # outside its set
        elif mass:
            foreign = self._foreign(tenant, op.index)
            body[mass] = {
                "id": str(uuid.uuid4()),
                "tenant_id": str(foreign.id),
                "user_id": str(foreign.users[0].id),
                "deleted_at": None,
                "created_at": "2020-01-01T00:00:00Z",
            }[mass]
        return body

    async def _op_update_document(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        target_id, document = self._document(tenant, op.args["target"])
        body = self._update_body(op, tenant)
        if caller.deleted:
            expected = 403
        elif op.args.get("mass_assign"):
            expected = 422
        elif document is None or document.deleted:
            expected = 404
        else:
            expected = 200

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            data = document_schemas.DocumentUpdate.model_validate(body)
            updated = await documents_service.update_document(session, context, target_id, data)
            return 200, self._document_payload(updated)

        status, payload = await self._call(
            op,
            tenant,
            caller,
            ("PATCH", f"/documents/{target_id}", None, body),
            service,
            sent_ids=[target_id],
        )
        if not self._expect(op, status, expected, payload) or status != 200 or document is None:
            return
        fields = op.args["fields"]
        changed = False
        if "status" in fields and fields["status"] != document.status:
            document.status = fields["status"]
            changed = True
        if "metadata" in fields and fields["metadata"] != document.metadata:
            document.metadata = fields["metadata"]
            changed = True
        if "embedding" in fields:
            document.embedding = fields["embedding"]
            changed = True
        if changed:
            self._audit(tenant, "document.update", document.id, caller)
        self._check_document(op, payload, document)

    async def _op_delete_document(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        target_id, document = self._document(tenant, op.args["target"])
        if caller.deleted:
            expected = 403
        elif document is None or document.deleted:
            expected = 404
        else:
            expected = 204

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            await documents_service.delete_document(session, context, target_id)
            return 204, None

        status, payload = await self._call(
            op,
            tenant,
            caller,
            ("DELETE", f"/documents/{target_id}", None, None),
            service,
            sent_ids=[target_id],
        )
        if self._expect(op, status, expected, payload) and status == 204 and document:
            document.deleted = True
            self._audit(tenant, "document.delete", document.id, caller)

    async def _op_restore_document(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        target_id, document = self._document(tenant, op.args["target"])
        if caller.deleted or caller.role != "admin":
            expected = 403  # soft-deleted rows are for admins only
        elif document is None:
            expected = 404
        else:
            expected = 200  # restoring an active document is an idempotent no-op

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            require_admin(context)
            restored = await documents_service.restore_document(session, context, target_id)
            return 200, self._document_payload(restored)

        status, payload = await self._call(
            op,
            tenant,
            caller,
            ("POST", f"/documents/{target_id}/restore", None, None),
            service,
            sent_ids=[target_id],
        )
        if self._expect(op, status, expected, payload) and status == 200 and document:
            if document.deleted:
                document.deleted = False
                self._audit(tenant, "document.restore", document.id, caller)
            self._check_document(op, payload, document)

    # Users --------------------------------------------------------------------------------------

    def _user_payload(self, user: User) -> dict[str, Any]:
        return user_schemas.UserRecord.model_validate(user).model_dump(mode="json")

    def _check_user(self, op: Op, body: Any, user: UserState) -> None:
        expected = (str(user.id), user.email, user.role, user.deleted)
        actual = (
            body.get("id"),
            body.get("email"),
            body.get("role"),
            body.get("deleted_at") is not None,
        )
        if actual != expected:
            self._fail("mismatch", op, f"user differs from the model: {actual} != {expected}")

    async def _op_create_user(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        tenant.created_users += 1
        how = op.args["email"]
        active = [u for u in tenant.users if not u.deleted]
        if how == "own_duplicate":
            email = active[op.index % len(active)].email.upper()
        elif how == "foreign_duplicate":
            email = self._foreign(tenant, op.index).users[1].email
        else:
            email = f"u{op.index}-{tenant.created_users}@t{tenant.index}.fuzz.example.org"
        subject = f"fuzz-{uuid.uuid4().hex}"
        body: dict[str, Any] = {"email": email, "external_idp_id": subject, "role": op.args["role"]}
        if op.args["mass_assign"]:
            body["tenant_id"] = str(self._foreign(tenant, op.index).id)
        normalised = email.casefold()
        if caller.deleted or caller.role != "admin":
            expected = 403
        elif op.args["mass_assign"]:
            expected = 422
        elif any(skeleton(u.email) == skeleton(normalised) for u in active):
            expected = 409  # the same address, or one that looks the same (TS #39 skeleton)
        else:
            expected = 201

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            require_admin(context)
            data = user_schemas.UserCreate.model_validate(body)
            user = await users_service.create_user(
                session, context.tenant_id, data, AuditActor.from_request(context)
            )
            return 201, self._user_payload(user)

        status, payload = await self._call(
            op, tenant, caller, ("POST", "/users", None, body), service
        )
        if not self._expect(op, status, expected, payload) or status != 201:
            return
        user = UserState(
            uuid.UUID(payload["id"]),
            datetime.fromisoformat(payload["created_at"]),
            normalised,
            subject,
            op.args["role"],
        )
        self._check_user(op, payload, user)
        tenant.users.append(user)
        self.owner[user.id] = tenant.index
        self._audit(tenant, "user.create", user.id, caller)

    async def _op_delete_user(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        target_id, user = self._user(tenant, op.args["target"], caller)
        if caller.deleted or caller.role != "admin":
            expected = 403
        elif user is None or user.deleted:
            expected = 404
        else:
            expected = 204

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            require_admin(context)
            found = await users_service.get_tenant_user(session, context.tenant_id, target_id)
            await users_service.delete_user(session, found.id, AuditActor.from_request(context))
            return 204, None

        status, payload = await self._call(
            op,
            tenant,
            caller,
            ("DELETE", f"/users/{target_id}", None, None),
            service,
            sent_ids=[target_id],
        )
        if self._expect(op, status, expected, payload) and status == 204 and user:
            user.deleted = True
            self._audit(tenant, "user.delete", user.id, caller)

    async def _op_restore_user(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        target_id, user = self._user(tenant, op.args["target"], caller)
        clash = user is not None and any(
            u.id != user.id
            and not u.deleted
            and (u.email == user.email or u.subject == user.subject)
            for u in tenant.users
        )
        if caller.deleted or caller.role != "admin":
            expected = 403
        elif user is None:
            expected = 404
        elif user.deleted and clash:
            expected = 409
        else:
            expected = 200

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            require_admin(context)
            found = await users_service.get_tenant_user(
                session, context.tenant_id, target_id, include_deleted=True
            )
            restored = await users_service.restore_user(
                session, found.id, AuditActor.from_request(context)
            )
            return 200, self._user_payload(restored)

        status, payload = await self._call(
            op,
            tenant,
            caller,
            ("POST", f"/users/{target_id}/restore", None, None),
            service,
            sent_ids=[target_id],
        )
        if not self._expect(op, status, expected, payload) or status != 200 or user is None:
            return
        if user.deleted:
            user.deleted = False
            self._audit(tenant, "user.restore", user.id, caller)
        self._check_user(op, payload, user)

    async def _op_get_user(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        target_id, user = self._user(tenant, op.args["target"])
        include_deleted = op.args["include_deleted"]
        if caller.deleted or (include_deleted and caller.role != "admin"):
            expected = 403
        elif user is None or (user.deleted and not include_deleted):
            expected = 404
        else:
            expected = 200

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            if include_deleted:
                require_admin(context)
            found = await users_service.get_tenant_user(
                session, context.tenant_id, target_id, include_deleted=include_deleted
            )
            return 200, self._user_payload(found)

        params = {"include_deleted": "true"} if include_deleted else None
        status, payload = await self._call(
            op,
            tenant,
            caller,
            ("GET", f"/users/{target_id}", params, None),
            service,
            sent_ids=[target_id],
        )
        if self._expect(op, status, expected, payload) and status == 200 and user:
            self._check_user(op, payload, user)

    async def _op_list_users(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        include_deleted, limit = op.args["include_deleted"], op.args["limit"]
        refused = caller.deleted or (include_deleted and caller.role != "admin")
        expected = 403 if refused else 200
        wanted = sorted(
            (u for u in tenant.users if include_deleted or not u.deleted),
            key=lambda u: (u.created_at, u.id),
            reverse=True,
        )
        seen: list[dict[str, Any]] = []
        cursor: str | None = None
        for _page in range(len(wanted) // limit + 2):
            params: dict[str, Any] = {"limit": limit}
            if include_deleted:
                params["include_deleted"] = "true"
            if cursor:
                params["cursor"] = cursor
            page = PageRequest(cursor=cursor, limit=limit)

            async def service(
                session: AsyncSession, context: RequestContext, page: PageRequest = page
            ) -> tuple[int, Any]:
                if include_deleted:
                    require_admin(context)
                rows, next_cursor = await users_service.page_users(
                    session, context.tenant_id, page, self.codec, include_deleted=include_deleted
                )
                return 200, {
                    "items": [self._user_payload(row) for row in rows],
                    "next_cursor": next_cursor,
                }

            status, payload = await self._call(
                op, tenant, caller, ("GET", "/users", params, None), service
            )
            if not self._expect(op, status, expected, payload) or status != 200:
                return
            seen.extend(payload["items"])
            cursor = payload["next_cursor"]
            if not cursor:
                break
        if [item["id"] for item in seen] != [str(u.id) for u in wanted]:
            self._fail("mismatch", op, f"listed {len(seen)} users, model expects {len(wanted)}")
            return
        for item, user in zip(seen, wanted, strict=True):
            self._check_user(op, item, user)

    # Audit log and /me ------------------------------------------------------------------------

    async def _op_read_audit(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        resource_id: uuid.UUID | None = None
        if op.args["by_resource"] is not None:
            resource_id, _ = self._document(tenant, op.args["by_resource"])
        entries: list[dict[str, Any]] = []
        cursor: str | None = None
        expected = 403 if caller.deleted else 200
        while True:
            params: dict[str, Any] = {"limit": 200}
            if resource_id is not None:
                params["resource_id"] = str(resource_id)
            if cursor:
                params["cursor"] = cursor
            page = PageRequest(cursor=cursor, limit=200)

            async def service(
                session: AsyncSession, context: RequestContext, page: PageRequest = page
            ) -> tuple[int, Any]:
                query = audit_logs_service.AuditQuery(resource_id=resource_id)
                rows, next_cursor = await audit_logs_service.list_audit_logs(
                    session, context, query, page, self.codec
                )
                items = [
                    audit_schemas.AuditLogEntry.model_validate(row).model_dump(mode="json")
                    for row in rows
                ]
                return 200, {"items": items, "next_cursor": next_cursor}

            status, payload = await self._call(
                op,
                tenant,
                caller,
                ("GET", "/audit-logs", params, None),
                service,
                sent_ids=[resource_id] if resource_id else [],
            )
            if not self._expect(op, status, expected, payload) or status != 200:
                return
            entries.extend(payload["items"])
            cursor = payload["next_cursor"]
            if not cursor:
                break
        got = Counter(
            (e["action"], e["resource_id"], uuid.UUID(e["user_id"]) if e["user_id"] else None)
            for e in entries
        )
        want = Counter(
            {
                key: n
                for key, n in tenant.audit.items()
                if (resource_id is None or key[1] == str(resource_id))
                # Members read only their own actions' rows (docs/SECURITY.md, minimum necessary).
                and (caller.role == "admin" or key[2] == caller.id)
            }
        )
        if got != want:
            self._fail(
                "mismatch", op, f"audit log differs from the model: {got - want} / {want - got}"
            )

    async def _op_me(self, op: Op, tenant: TenantState, caller: UserState) -> None:
        from app.services import me as me_service

        async def service(session: AsyncSession, context: RequestContext) -> tuple[int, Any]:
            # GET /me answers from the caller lookup's row (as the route does).
            identity = VerifiedIdentity(tenant_id=context.tenant_id, subject=caller.subject)
            resolved = await callers_service.resolve_caller(session, identity)
            return 200, me_service.me_of(resolved).model_dump(mode="json")

        status, payload = await self._call(op, tenant, caller, ("GET", "/me", None, None), service)
        expected = 403 if caller.deleted else 200
        answered = self._expect(op, status, expected, payload) and status == 200
        if answered and (
            payload["tenant"]["id"] != str(tenant.id) or payload["user"]["id"] != str(caller.id)
        ):
            self._fail("leak", op, f"/me answered for someone else: {payload}")

    # The final state --------------------------------------------------------------------------

    async def check_final_state(self) -> None:
        """The database, read as the provisioning role, must equal the model, tenant by tenant."""
        ids = [tenant.id for tenant in self.tenants]
        async with admin_transaction(self.env.admin_sessions) as session:
            documents = (
                await session.execute(
                    select(
                        Document.id,
                        Document.tenant_id,
                        Document.user_id,
                        Document.status,
                        Document.metadata_,
                        Document.deleted_at,
                        Document.embedding_vector.is_not(None).label("embedded"),
                    ).where(Document.tenant_id.in_(ids))
                )
            ).all()
            users = (await session.scalars(select(User).where(User.tenant_id.in_(ids)))).all()
            audit = (
                await session.scalars(select(AuditLog).where(AuditLog.tenant_id.in_(ids)))
            ).all()
            stored_documents = {
                d.id: (
                    d.tenant_id,
                    d.user_id,
                    d.status,
                    d.metadata_,
                    d.deleted_at is not None,
                    d.embedded,
                )
                for d in documents
            }
            stored_users = {
                u.id: (u.tenant_id, u.email, u.role, u.deleted_at is not None) for u in users
            }
            stored_audit: dict[uuid.UUID, Counter[tuple[str, str, uuid.UUID | None]]] = {}
            for row in audit:
                stored_audit.setdefault(row.tenant_id, Counter())[
                    (row.action, str(row.resource_id), row.user_id)
                ] += 1
        for tenant in self.tenants:
            for document in tenant.documents:
                expected = (
                    tenant.id,
                    document.user_id,
                    document.status,
                    document.metadata,
                    document.deleted,
                    document.embedding is not None,
                )
                if stored_documents.pop(document.id, None) != expected:
                    self._fail(
                        "final-state",
                        None,
                        f"tenant {tenant.index}: document {document.id} differs from the model",
                    )
            for user in tenant.users:
                expected_user = (tenant.id, user.email, user.role, user.deleted)
                if stored_users.pop(user.id, None) != expected_user:
                    self._fail(
                        "final-state",
                        None,
                        f"tenant {tenant.index}: user {user.id} differs from the model",
                    )
            if stored_audit.get(tenant.id, Counter()) != tenant.audit:
                self._fail("final-state", None, f"tenant {tenant.index}: audit log differs")
        for leftover in (*stored_documents, *stored_users):
            self._fail("leak", None, f"row {leftover} exists in the database but not in the model")


def _first_difference(a: list[str], b: list[str]) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def _position(document: DocState) -> Any:
    from app.services.pagination import Position

    return Position(document.created_at, document.id)


# Running, replaying, shrinking ------------------------------------------------------------


async def run_once(
    env: FuzzEnvironment,
    ops: Sequence[Op],
    tenants: int,
    concurrency: int,
    *,
    strict_search: bool = False,
) -> LeakFuzzer:
    """Provision fresh tenants, run `ops`, check the final state."""
    fuzzer = LeakFuzzer(env, tenants, concurrency, strict_search=strict_search)
    await fuzzer.provision()
    await fuzzer.run(ops)
    await fuzzer.check_final_state()
    return fuzzer


async def shrink(
    env: FuzzEnvironment,
    ops: list[Op],
    tenants: int,
    *,
    strict_search: bool = False,
    max_replays: int = 80,
    max_seconds: float = 120.0,
) -> tuple[list[Op] | None, str]:
    """The shortest op list found (delta debugging) that still fails when replayed alone."""
    started = time.monotonic()
    replays = 0

    async def fails(candidate: list[Op]) -> bool:
        nonlocal replays
        replays += 1
        replay = await run_once(env, candidate, tenants, concurrency=1, strict_search=strict_search)
        return bool(replay.failures)

    def spent() -> bool:
        return replays >= max_replays or time.monotonic() - started > max_seconds

    if not await fails(ops):
        return None, "not reproduced by a sequential replay (a concurrency-dependent failure)"
    first = await run_once(env, ops, tenants, concurrency=1, strict_search=strict_search)
    op_failures = [f.op for f in first.failures if f.op is not None]
    if op_failures and len(op_failures) == len(first.failures):
        prefix = [op for op in ops if op.index <= min(op_failures)]
        if await fails(prefix):
            ops = prefix
    granularity = 2
    while len(ops) >= 2 and not spent():
        size = math.ceil(len(ops) / granularity)
        chunks = [ops[i : i + size] for i in range(0, len(ops), size)]
        for chunk in chunks:
            if spent():
                break
            if await fails(chunk):
                ops, granularity = chunk, 2
                break
        else:
            for chunk in chunks:
                if spent():
                    break
                rest = [op for op in ops if op not in chunk]
                if await fails(rest):
                    ops, granularity = rest, max(granularity - 1, 2)
                    break
            else:
                if granularity >= len(ops):
                    break
                granularity = min(len(ops), granularity * 2)
    note = f" [{replays} replays{', budget exhausted' if spent() else ''}]"
    return ops, note


async def fuzz(
    env: FuzzEnvironment,
    *,
    seed: int,
    operations: int,
    tenants: int = 20,
    concurrency: int = 16,
    shrink_failures: bool = True,
    strict_search: bool = False,
) -> Report:
    """Generate `operations` from `seed`, run them, and shrink any failure."""
    ops = generate(seed, operations, tenants)
    started = time.monotonic()
    fuzzer = await run_once(env, ops, tenants, concurrency, strict_search=strict_search)
    report = Report(
        seed=seed,
        operations=operations,
        tenants=tenants,
        concurrency=concurrency,
        ops_by_kind=fuzzer.ops_by_kind,
        statuses=fuzzer.statuses,
        failures=fuzzer.failures,
        duration=time.monotonic() - started,
        incomplete_searches=fuzzer.incomplete_searches,
    )
    if report.failures and shrink_failures:
        report.shrunk, report.shrink_note = await shrink(
            env, ops, tenants, strict_search=strict_search
        )
    return report
