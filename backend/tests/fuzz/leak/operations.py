"""The operations, one table: each is the HTTP request, the one service call it stands for, and
what the model expects of it."""

from __future__ import annotations

import base64
import itertools
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.lookalikes import skeleton
from app.schemas import audit_log as audit_schemas
from app.schemas import document as document_schemas
from app.schemas import user as user_schemas
from app.services import audit_logs as audit_logs_service
from app.services import documents as documents_service
from app.services import users as users_service
from app.services.actor import Actor
from app.services.callers import Caller
from app.services.pagination import PageRequest
from tests.fuzz.leak.generation import (
    DISTANCE_TOLERANCE,
    KINDS,
    Op,
    embedding,
    unit_vector,
)
from tests.fuzz.leak.model import DocState, TenantState, UserState, first_difference, position

if TYPE_CHECKING:
    from tests.fuzz.leak.runner import LeakFuzzer

Operation = Callable[["LeakFuzzer", Op, TenantState, UserState], Awaitable[None]]


async def create_document(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
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

    async def service(session: AsyncSession, context: Actor, _caller: Caller) -> tuple[int, Any]:
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


async def get_document(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
    target_id, document = self._document(tenant, op.args["target"])
    include_deleted = op.args["include_deleted"]
    if caller.deleted or (include_deleted and caller.role != "admin"):
        expected = 403
    elif document is None or (document.deleted and not include_deleted):
        expected = 404
    else:
        expected = 200

    async def service(session: AsyncSession, context: Actor, _caller: Caller) -> tuple[int, Any]:
        found = await documents_service.get_document(
            session,
            context,
            target_id,
            include_deleted=include_deleted,
            audit_read=self.env.settings.AUDIT_DOCUMENT_READS,
        )
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


async def list_documents(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
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
            session: AsyncSession, context: Actor, _caller: Caller, page: PageRequest = page
        ) -> tuple[int, Any]:
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
            f" (first difference at {first_difference(seen, expected_ids)})",
        )


async def forged_cursor(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
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
            position(tenant.documents[0]),
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

    async def service(session: AsyncSession, context: Actor, _caller: Caller) -> tuple[int, Any]:
        rows, _ = await documents_service.list_documents(
            session, context, self._document_query(self._plain_list()), page, self.codec
        )
        return 200, {"items": [self._document_payload(row) for row in rows]}

    status, payload = await self._call(
        op, tenant, caller, ("GET", "/documents", {"cursor": cursor, "limit": 5}, None), service
    )
    self._expect(op, status, expected, payload)


async def search(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
    args = op.args
    query = unit_vector(args["embedding"])
    candidates = [
        d
        for d in tenant.documents
        if not d.deleted
        and d.embedding is not None
        and self._matches(d, args["status"], None, args["metadata"])
    ]
    ranked = sorted(
        (
            (1.0 - float(np.dot(query, unit_vector(d.embedding))), d)
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

    async def service(session: AsyncSession, context: Actor, _caller: Caller) -> tuple[int, Any]:
        request = document_schemas.SearchRequest.model_validate(body)
        hits = await documents_service.search_documents(session, context, request)
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
        str(d.id): 1.0 - float(np.dot(query, unit_vector(d.embedding)))
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
        self._fail("mismatch", op, f"search returned {len(got)} hits, the tenant has {len(want)}")


async def update_document(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
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

    async def service(session: AsyncSession, context: Actor, _caller: Caller) -> tuple[int, Any]:
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


async def delete_document(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
    target_id, document = self._document(tenant, op.args["target"])
    if caller.deleted:
        expected = 403
    elif document is None or document.deleted:
        expected = 404
    else:
        expected = 204

    async def service(session: AsyncSession, context: Actor, _caller: Caller) -> tuple[int, Any]:
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


async def restore_document(
    self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState
) -> None:
    target_id, document = self._document(tenant, op.args["target"])
    if caller.deleted or caller.role != "admin":
        expected = 403  # soft-deleted rows are for admins only
    elif document is None:
        expected = 404
    else:
        expected = 200  # restoring an active document is an idempotent no-op

    async def service(session: AsyncSession, context: Actor, _caller: Caller) -> tuple[int, Any]:
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


async def create_user(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
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

    async def service(session: AsyncSession, context: Actor, _caller: Caller) -> tuple[int, Any]:
        context.require_admin()  # the route's AdminTenant runs before the body is read
        data = user_schemas.UserCreate.model_validate(body)
        user = await users_service.create_user(session, context, data)
        return 201, self._user_payload(user)

    status, payload = await self._call(op, tenant, caller, ("POST", "/users", None, body), service)
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


async def delete_user(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
    target_id, user = self._user(tenant, op.args["target"], caller)
    if caller.deleted or caller.role != "admin":
        expected = 403
    elif user is None or user.deleted:
        expected = 404
    else:
        expected = 204

    async def service(session: AsyncSession, context: Actor, _caller: Caller) -> tuple[int, Any]:
        await users_service.delete_user(session, context, target_id)
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


async def restore_user(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
    target_id, user = self._user(tenant, op.args["target"], caller)
    clash = user is not None and any(
        u.id != user.id and not u.deleted and (u.email == user.email or u.subject == user.subject)
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

    async def service(session: AsyncSession, context: Actor, _caller: Caller) -> tuple[int, Any]:
        restored = await users_service.restore_user(session, context, target_id)
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


async def get_user(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
    target_id, user = self._user(tenant, op.args["target"])
    include_deleted = op.args["include_deleted"]
    if caller.deleted or (include_deleted and caller.role != "admin"):
        expected = 403
    elif user is None or (user.deleted and not include_deleted):
        expected = 404
    else:
        expected = 200

    async def service(session: AsyncSession, context: Actor, _caller: Caller) -> tuple[int, Any]:
        found = await users_service.get_user(
            session, context, target_id, include_deleted=include_deleted
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


async def list_users(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
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
            session: AsyncSession, context: Actor, _caller: Caller, page: PageRequest = page
        ) -> tuple[int, Any]:
            query = users_service.UserQuery(include_deleted=include_deleted)
            rows, next_cursor = await users_service.page_users(
                session, context, query, page, self.codec
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


async def read_audit(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
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
            session: AsyncSession, context: Actor, _caller: Caller, page: PageRequest = page
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
        self._fail("mismatch", op, f"audit log differs from the model: {got - want} / {want - got}")


async def me(self: LeakFuzzer, op: Op, tenant: TenantState, caller: UserState) -> None:
    from app.services import me as me_service

    async def service(session: AsyncSession, context: Actor, resolved: Caller) -> tuple[int, Any]:
        # GET /me answers from the caller lookup's row (as the route does).
        return 200, me_service.me_of(resolved).model_dump(mode="json")

    status, payload = await self._call(op, tenant, caller, ("GET", "/me", None, None), service)
    expected = 403 if caller.deleted else 200
    answered = self._expect(op, status, expected, payload) and status == 200
    if answered and (
        payload["tenant"]["id"] != str(tenant.id) or payload["user"]["id"] != str(caller.id)
    ):
        self._fail("leak", op, f"/me answered for someone else: {payload}")


# kind -> what runs it; generation.KINDS weighs the same kinds.
OPERATIONS: dict[str, Operation] = {
    "create_document": create_document,
    "get_document": get_document,
    "list_documents": list_documents,
    "forged_cursor": forged_cursor,
    "search": search,
    "update_document": update_document,
    "delete_document": delete_document,
    "restore_document": restore_document,
    "create_user": create_user,
    "delete_user": delete_user,
    "restore_user": restore_user,
    "get_user": get_user,
    "list_users": list_users,
    "read_audit": read_audit,
    "me": me,
}
assert set(OPERATIONS) == set(KINDS), set(OPERATIONS) ^ set(KINDS)
