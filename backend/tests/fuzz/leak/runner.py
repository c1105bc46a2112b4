"""The runner: fresh tenants, the operations over HTTP or in the service layer, answers checked."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.identity import VerifiedIdentity
from app.core.config import Settings
from app.core.errors import AppError
from app.database import Database
from app.database.session import admin_transaction, tenant_transaction
from app.main import create_app
from app.models import AuditLog, Document, User
from app.schemas import document as document_schemas
from app.schemas import user as user_schemas
from app.services import callers as callers_service
from app.services import documents as documents_service
from app.services.actor import Actor
from app.services.callers import Caller
from app.services.pagination import CursorCodec
from testkit.auth_helpers import TestIssuer
from testkit.factories import make_document, make_tenant, make_user
from tests.fuzz.leak.generation import (
    API,
    CONTENT_TYPES,
    DEPARTMENTS,
    EMBEDDING_VOCABULARY,
    SEEDED_DOCUMENTS,
    UUID_PATTERN,
    Op,
    embedding,
)
from tests.fuzz.leak.model import DocState, Failure, TenantState, UserState
from tests.fuzz.leak.operations import OPERATIONS


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
        try:
            await OPERATIONS[op.kind](self, op, tenant, caller)
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
        service: Callable[[AsyncSession, Actor, Caller], Awaitable[tuple[int, Any]]],
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
        work: Callable[[AsyncSession, Actor, Caller], Awaitable[tuple[int, Any]]],
    ) -> tuple[int, Any]:
        """What the routers do, minus HTTP: one tenant transaction, the caller resolved in it."""
        try:
            identity = VerifiedIdentity(tenant_id=tenant.id, subject=caller.subject)
            async with tenant_transaction(self.env.database.sessions, tenant.id) as session:
                resolved = await callers_service.resolve_caller(session, identity)
                actor = Actor.user(
                    tenant_id=resolved.tenant_id,
                    user_id=resolved.user_id,
                    role=resolved.role,
                    client_ip="127.0.0.1",
                    user_agent="leak-fuzz",
                )
                status, body = await work(session, actor, resolved)
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
        for match in set(UUID_PATTERN.findall(text)):
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

    @staticmethod
    def _plain_list() -> dict[str, Any]:
        return {"status": None, "content_type": None, "metadata": None, "include_deleted": False}

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

    # Audit log and /me ------------------------------------------------------------------------

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
