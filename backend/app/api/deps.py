"""Request dependencies: the verified caller, the request's one tenant transaction, admin checks.

Use them as annotated parameters in routers:

    async def handler(document_id: uuid.UUID, tenant: Tenant) -> ...:
        return await documents_service.get_document(tenant.session, tenant.actor, document_id)

`tenant.session` and `tenant.actor` come from the same per-request transaction, opened by
`app.database.session.tenant_transaction` (BEGIN and the tenant context in one round trip),
then the caller lookup, skipped while `app.services.caller_cache` holds the answer. Every
dependency here is `async def`: a plain `def` dependency costs a thread-pool hand-off per
request (issue 20's profile). A read-only route (`@read_only()`) may be served by a read
replica: its caller is then checked on the primary first, in a short transaction of its own
(the cache's counter is the primary's, and a replica may lag a deactivation). The transaction
runs as `app_runtime`, is committed when the handler returns and *before* the response is sent
(the dependency has `scope="function"`, so a failed commit becomes an error response, never a
success), and is rolled back if the handler raises.

The bearer token is read from the header by plain calls, not through a FastAPI security
dependency: FastAPI charges every dependency node on every request, and more for each node
above a security scheme (issue 20). The OpenAPI document still declares the scheme on every
route that needs a token: `app.api.openapi_security` derives it from `TOKEN_CHECKS`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api import idempotency
from app.api.admission import AdmissionTicket, CallerAdmission
from app.auth.identity import VerifiedIdentity
from app.auth.tokens import TokenVerifier
from app.content.backends import ContentBackends
from app.core import tracing
from app.core.config import Settings
from app.core.errors import ForbiddenError, UnauthorizedError
from app.database import Database
from app.database import replicas as replicas_module
from app.database.session import CALLER_CHANGES, tenant_transaction
from app.services import callers as callers_service
from app.services import idempotency as idempotency_service
from app.services.actor import Actor
from app.services.caller_cache import CallerCache

__all__ = [
    "BEARER_SCHEME",
    "TOKEN_CHECKS",
    "AdminTenant",
    "Content",
    "Sessions",
    "StreamingActor",
    "Tenant",
    "TenantRequest",
    "authenticate",
    "read_only",
]

_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])
# Route handlers that only read, and the setting (if any) under which one writes after all.
_READ_ONLY_ENDPOINTS: dict[Callable[..., Any], Callable[[Settings], bool] | None] = {}


def read_only(
    *, unless: Callable[[Settings], bool] | None = None
) -> Callable[[_Endpoint], _Endpoint]:
    """Mark a route handler as read-only: a read replica may serve its transaction.

    Put it under the route decorator. `unless`: a setting under which the handler writes
    (e.g. an audit row per read), and so must run on the primary.
    """

    def mark(endpoint: _Endpoint) -> _Endpoint:
        _READ_ONLY_ENDPOINTS[endpoint] = unless
        return endpoint

    return mark


def _reads_only(request: Request, settings: Settings) -> bool:
    endpoint = request.scope.get("endpoint")
    if endpoint not in _READ_ONLY_ENDPOINTS:
        return False
    unless = _READ_ONLY_ENDPOINTS[endpoint]
    return unless is None or not unless(settings)


_MAX_USER_AGENT_LENGTH = 512


BEARER_SCHEME = HTTPBearer(auto_error=False, description="An OIDC access token (JWT).")
"""The scheme the OpenAPI document declares (the Authorize button in /docs). Never a dependency:
the header is parsed below, so each failure gets its own reason."""


async def authenticate(request: Request) -> VerifiedIdentity:
    """Verify the bearer token (no database access): 401 when missing, expired or invalid."""
    return await _verified_identity(request)


async def _verified_identity(request: Request) -> VerifiedIdentity:
    header = request.headers.get("authorization")
    if header is None:
        raise UnauthorizedError("send an Authorization: Bearer <token> header", reason="missing")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError(
            "the Authorization header must be 'Bearer <token>'", reason="invalid"
        )
    verifier: TokenVerifier = request.app.state.token_verifier
    return await verifier.verify(token)


@dataclass(frozen=True)
class _Admitted:
    identity: VerifiedIdentity
    ticket: AdmissionTicket


async def _admitted(
    request: Request, identity: Annotated[VerifiedIdentity, Depends(authenticate)]
) -> AsyncIterator[_Admitted]:
    """The verified caller, holding one of its tenant's slots (429 when over the limits)."""
    async with _admission(request, identity) as admitted:
        yield admitted


@asynccontextmanager
async def _admission(request: Request, identity: VerifiedIdentity) -> AsyncIterator[_Admitted]:
    """Hold one of the identity's tenant's slots.

    An identity the caller lookup refused recently holds a slot of its own instead, so it never
    spends its tenant's budget (app.api.admission.CallerAdmission).
    """
    admission: CallerAdmission = request.app.state.caller_admission
    async with admission.admit((identity.tenant_id, identity.subject)) as ticket:
        yield _Admitted(identity, ticket)


@dataclass(frozen=True)
class TenantRequest:
    """What a tenant-scoped handler works with: one parameter, so one dependency to solve.

    `session` is the request's one transaction as app_runtime, scoped to the caller's tenant;
    `actor` the authenticated caller (tenant, user, role) with the request facts audit rows
    record; `caller` the caller lookup's row (user and tenant as GET /me shows them);
    `settings` the running app's.
    """

    session: AsyncSession
    actor: Actor
    caller: callers_service.Caller
    settings: Settings


def _request_dependency(
    name: str, *, admins_only: bool
) -> Callable[[Request], AsyncIterator[TenantRequest]]:
    """The request dependency (`Tenant`, or `AdminTenant` when `admins_only`)."""

    async def dependency(request: Request) -> AsyncIterator[TenantRequest]:
        # Token check and admission are called here, not declared as sub-dependencies, and
        # handlers take this one object rather than a session and an actor apart: FastAPI
        # charges every dependency node on every request, and walks a dependency's sub-tree
        # again for every parameter that uses it (issue 20). The admin check is here too, once
        # the lookup knows the role, rather than a node above. Admitted before the transaction
        # opens, released after it ends (this dependency has scope="function").
        async with (
            _admission(request, await _verified_identity(request)) as admitted,
            _caller_transaction(request, admitted) as tenant_request,
        ):
            if admins_only:
                tenant_request.actor.require_admin()
            yield tenant_request

    dependency.__name__ = dependency.__qualname__ = name
    return dependency


_tenant_request = _request_dependency("_tenant_request", admins_only=False)
_admin_tenant_request = _request_dependency("_admin_tenant_request", admins_only=True)


async def _streaming_actor(
    request: Request,
    admitted: Annotated[_Admitted, Depends(_admitted, scope="function")],
) -> Actor:
    # The caller lookup's transaction ends here, before the handler streams a body in; the
    # admission slot is still held until the handler returns.
    # No consistency token from this transaction: the handler's writes come after it.
    async with _caller_transaction(request, admitted, issue_token=False) as tenant_request:
        actor = tenant_request.actor
    # That transaction has committed: the handler's own transaction records the response.
    idempotency.detach_claim(request)
    return actor


@asynccontextmanager
async def _caller_transaction(
    request: Request, admitted: _Admitted, *, issue_token: bool = True
) -> AsyncIterator[TenantRequest]:
    database: Database = request.app.state.database
    settings: Settings = request.app.state.settings
    identity = admitted.identity
    reads = database.reads
    reads_only = _reads_only(request, settings)
    presented = request.headers.get(replicas_module.CONSISTENCY_HEADER)
    # Checked whatever serves the request: a foreign or forged token is a client error.
    min_position = (
        replicas_module.read_token(settings.consistency_token_key, identity.tenant_id, presented)
        if presented is not None
        else None
    )
    replica = reads.choose(min_position) if reads is not None and reads_only else None
    async with AsyncExitStack() as stack:
        if replica is None:
            # A write on the primary records where its commit ends, for the client's next reads.
            record = reads is not None and not reads_only and issue_token
            transaction = tenant_transaction(
                database.sessions, identity.tenant_id, record_commit_position=record
            )
            session = await stack.enter_async_context(transaction)
            caller = await _checked_caller(request, admitted, session)
        else:
            # The caller is checked on the primary, in a short transaction of its own, before
            # the replica serves the read: a replica may not have replayed a deactivation yet,
            # and the caller cache's counter is the primary's. So a refusal is as prompt as on
            # the primary, and the once-a-minute login stamp is written there.
            async with tenant_transaction(database.sessions, identity.tenant_id) as primary:
                caller = await _checked_caller(request, admitted, primary)
            transaction = tenant_transaction(replica.sessions, identity.tenant_id)
            try:
                session = await stack.enter_async_context(transaction)
            except (OperationalError, PoolTimeoutError) as exc:
                if reads is None or not replicas_module.unreachable(exc):
                    raise
                reads.mark_down(replica, exc)  # down since the last check: the primary serves
                replica = None
                transaction = tenant_transaction(database.sessions, identity.tenant_id)
                session = await stack.enter_async_context(transaction)
        request.state.database_node = replica.name if replica else "primary"
        user_agent = request.headers.get("user-agent")
        actor = Actor.user(
            tenant_id=caller.tenant_id,
            user_id=caller.user_id,
            role=caller.role,
            request_id=getattr(request.state, "request_id", None),
            client_ip=request.client.host if request.client else None,
            user_agent=user_agent[:_MAX_USER_AGENT_LENGTH] if user_agent else None,
        )
        request.state.context = actor  # the request log names the tenant and user
        tracing.tag_tenant(request.app.state.settings, caller.tenant_id)
        # Idempotency-Key: taken in this transaction, so its record commits with the write.
        await idempotency.claim_key(
            request,
            session,
            lambda key: idempotency_service.IdempotencyScope(caller.tenant_id, caller.user_id, key),
        )
        yield TenantRequest(session=session, actor=actor, caller=caller, settings=settings)
    if transaction.committed_position is not None:
        request.state.consistency_token = replicas_module.issue_token(
            settings.consistency_token_key, identity.tenant_id, transaction.committed_position
        )


async def _checked_caller(
    request: Request, admitted: _Admitted, session: AsyncSession
) -> callers_service.Caller:
    """The token's active caller, from the cache or looked up in `session` (the primary's).

    The cache serves it only if its listener has heard every change committed before
    `session`'s transaction began (the counter its opening round trip read).
    """
    callers: CallerCache = request.app.state.caller_cache
    identity = admitted.identity
    caller = callers.get(identity.tenant_id, identity.subject, session.info[CALLER_CHANGES])
    if caller is None:
        generation = callers.generation
        try:
            caller = await callers_service.resolve_caller(session, identity)
        except ForbiddenError:
            admitted.ticket.refuse()  # charged back to the identity, not the tenant
            raise
        callers.store(identity.subject, caller, generation)
    return caller


TOKEN_CHECKS: frozenset[Callable[..., Any]] = frozenset(
    {authenticate, _tenant_request, _admin_tenant_request}
)
"""The dependencies that verify the bearer token (the streaming path's `_admitted` depends on
`authenticate`): a route with one of them in its dependency tree needs a token."""

# scope="function": the transaction ends when the handler returns, before the response is sent.
Tenant = Annotated[TenantRequest, Depends(_tenant_request, scope="function")]
"""The request's tenant transaction and its caller (`TenantRequest`): the one parameter of a
tenant-scoped handler."""

AdminTenant = Annotated[TenantRequest, Depends(_admin_tenant_request, scope="function")]
"""Like `Tenant`, for admin-only endpoints: 403 for any other role (the services check the
role again)."""


StreamingActor = Annotated[Actor, Depends(_streaming_actor)]
"""The authenticated caller, looked up in a transaction already committed: for handlers that
stream a request body and open their own short transactions (`tenant_transaction`), so no
transaction stays open while bytes arrive."""


async def _sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    database: Database = request.app.state.database
    return database.sessions


Sessions = Annotated[async_sessionmaker[AsyncSession], Depends(_sessions)]
"""The runtime role's sessionmaker, for `tenant_transaction` in streaming handlers."""


async def _content(request: Request) -> ContentBackends:
    content: ContentBackends = request.app.state.content
    return content


Content = Annotated[ContentBackends, Depends(_content)]
"""The object store and key manager (opened on first use)."""
