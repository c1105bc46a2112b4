"""Request dependencies: the verified caller, the request's one tenant transaction, admin checks.

Use them as annotated parameters in routers:

    async def handler(session: TenantSession, context: CurrentContext) -> ...

Both come from the same per-request transaction: it runs as `app_runtime` with the tenant
context set, is committed when the handler returns and *before* the response is sent (the
dependency has `scope="function"`, so a failed commit becomes an error response, never a
success), and is rolled back if the handler raises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.tokens import TokenVerifier, VerifiedIdentity
from app.core.context import RequestContext
from app.core.errors import ForbiddenError, UnauthorizedError
from app.core.tenant_limits import AdmissionTicket, CallerAdmission
from app.database import Database
from app.database.session import transaction
from app.services import callers as callers_service

__all__ = [
    "AdminContext",
    "CurrentCaller",
    "CurrentContext",
    "RequestContext",
    "TenantSession",
    "authenticate",
    "require_admin",
]

_MAX_USER_AGENT_LENGTH = 512


# Declares the scheme in the OpenAPI document (the Authorize button in /docs); the header is
# parsed below so each failure gets its own reason.
_bearer_scheme = HTTPBearer(auto_error=False, description="An OIDC access token (JWT).")


async def authenticate(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)],
) -> VerifiedIdentity:
    """Verify the bearer token (no database access): 401 when missing, expired or invalid."""
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
    """The verified caller, holding one of its tenant's slots (429 when over the limits).

    An identity the caller lookup refused recently holds a slot of its own instead, so it never
    spends its tenant's budget (app.core.tenant_limits.CallerAdmission).
    """
    admission: CallerAdmission = request.app.state.caller_admission
    async with admission.admit((identity.tenant_id, identity.subject)) as ticket:
        yield _Admitted(identity, ticket)


@dataclass(frozen=True)
class _TenantRequest:
    session: AsyncSession
    context: RequestContext
    caller: callers_service.Caller


async def _tenant_request(
    request: Request,
    # Admitted before the transaction opens, released after it ends (scope="function").
    admitted: Annotated[_Admitted, Depends(_admitted, scope="function")],
) -> AsyncIterator[_TenantRequest]:
    database: Database = request.app.state.database
    async with transaction(database.sessions) as session:
        # Its first statement sets the tenant context (one round trip for both).
        try:
            caller = await callers_service.resolve_caller(session, admitted.identity)
        except ForbiddenError:
            admitted.ticket.refuse()  # charged back to the identity, not the tenant
            raise
        user_agent = request.headers.get("user-agent")
        context = RequestContext(
            tenant_id=caller.tenant_id,
            user_id=caller.user_id,
            user_role=caller.role,
            request_id=getattr(request.state, "request_id", None),
            client_ip=request.client.host if request.client else None,
            user_agent=user_agent[:_MAX_USER_AGENT_LENGTH] if user_agent else None,
        )
        request.state.context = context
        yield _TenantRequest(session=session, context=context, caller=caller)


# scope="function": the transaction ends when the handler returns, before the response is sent.
_TenantRequestDep = Annotated[_TenantRequest, Depends(_tenant_request, scope="function")]


def _session(tenant_request: _TenantRequestDep) -> AsyncSession:
    return tenant_request.session


def _context(tenant_request: _TenantRequestDep) -> RequestContext:
    return tenant_request.context


def _caller(tenant_request: _TenantRequestDep) -> callers_service.Caller:
    return tenant_request.caller


TenantSession = Annotated[AsyncSession, Depends(_session)]
"""The request's session: one transaction as app_runtime, scoped to the caller's tenant."""

CurrentContext = Annotated[RequestContext, Depends(_context)]
"""The authenticated caller (tenant, user, role) and request facts for audit rows."""

CurrentCaller = Annotated[callers_service.Caller, Depends(_caller)]
"""The caller lookup's row (user and tenant as GET /me shows them), same transaction."""


def require_admin(context: CurrentContext) -> RequestContext:
    """The caller's context if their role is admin; 403 otherwise."""
    if not context.is_admin:
        raise ForbiddenError("this action needs the admin role")
    return context


AdminContext = Annotated[RequestContext, Depends(require_admin)]
"""Like CurrentContext, for admin-only endpoints."""
