"""GET /tenant/export: everything the caller's tenant owns, as a streamed tar archive (admins).

An export streams from a transaction of its own (one pooled connection) for as long as its
client reads, outside the request limits (app.api.admission), so it is bounded on its own:
one export per tenant at a time across every worker (the tenant's advisory locks), at most
TENANT_EXPORT_MAX_CONCURRENT per worker whoever's they are (so requests keep the rest of the
pool), and TENANT_EXPORT_IDLE_SECONDS without the client reading ends it. Each refusal is a
429 with Retry-After, before the audit row (or anything else) is written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy import text

from app.api.admission import ALL_EXPORTS, TenantLimiter
from app.api.deps import AdminTenant
from app.api.responses import API_ERRORS, error_response
from app.api.streaming import IdleBoundedStreamingResponse
from app.content.backends import ContentBackends
from app.database import Database
from app.database.session import tenant_transaction
from app.services import audit_anchor as audit_anchor_service
from app.services import tenant_export as export_service
from app.services.actor import Actor

router = APIRouter(prefix="/tenant", tags=["tenant"], responses=API_ERRORS)

# A backstop for a worker that stopped running its event loop (the idle bound above is
# enforced by the worker itself): the server ends a transaction idle this long.
_IDLE_WHILE_STREAMING = text(
    "SELECT set_config('idle_in_transaction_session_timeout', '300000', true)"
)

ARCHIVE_MEDIA_TYPE = "application/x-tar"


async def _export_admin(tenant: AdminTenant) -> Actor:
    # Not a generator: the slot and the claim below are held until the response is sent, and
    # FastAPI lets such a dependency reach the request's transaction (scope="function") only
    # through one that is not.
    return tenant.actor


ExportAdmin = Annotated[Actor, Depends(_export_admin)]


async def _export_slot(request: Request, _admin: ExportAdmin) -> AsyncIterator[None]:
    """One of this worker's export slots (429 when all are taken), held until the response
    has been sent or dropped: the request's exit stack releases it on every path."""
    limiter: TenantLimiter = request.app.state.export_limiter
    async with limiter.admit(ALL_EXPORTS):
        yield


ExportSlot = Annotated[None, Depends(_export_slot)]


async def _export_claim(
    request: Request, actor: ExportAdmin, _slot: ExportSlot
) -> AsyncIterator[export_service.ExportClaim]:
    """The tenant's export claim (429 while another export of it starts or streams), taken
    before the handler writes the audit row. The stream releases it once it holds the
    tenant's stream lock; the request's exit stack releases it on every other path (a
    refusal, an error, a response dropped before it is sent)."""
    database: Database = request.app.state.database
    async with export_service.claim_export(database.sessions, actor.own_tenant()) as claim:
        yield claim


ExportClaim = Annotated[export_service.ExportClaim, Depends(_export_claim)]


@router.get(
    "/export",
    summary="Export everything the tenant owns as a tar archive (admins)",
    response_class=IdleBoundedStreamingResponse,
    responses={
        200: {
            "description": "The archive, format tenant-export/1 (docs/TENANT_LIFECYCLE.md): rows "
            "as JSON Lines, the audit chain and its head, decrypted content, a SHA-256 manifest."
            " A client that reads nothing for TENANT_EXPORT_IDLE_SECONDS gets it cut short.",
            "content": {ARCHIVE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
        429: error_response(
            "An export of the caller's tenant is already being streamed (one at a time), or "
            "this server streams as many exports as it allows (exports are busy); retry after "
            "the `Retry-After` header's seconds."
        ),
    },
)
async def export_tenant(
    request: Request, tenant: AdminTenant, claim: ExportClaim
) -> IdleBoundedStreamingResponse:
    """Stream the caller's tenant's archive; the export is audited before the first byte.

    The rows are read in one REPEATABLE READ snapshot as `app_runtime` under RLS, like every
    request. The API server holds no anchor signing key (docs/AUDIT_INTEGRITY.md), so its
    archives carry the chain's head unsigned unless one is configured; an operator's
    `export-tenant` signs it.
    """
    session, actor, settings = tenant.session, tenant.actor, tenant.settings
    tenant_id = actor.own_tenant()
    signing = settings.AUDIT_ANCHOR_SIGNING_KEY is not None
    anchor_key = audit_anchor_service.signing_key(settings) if signing else None
    # The claim (a dependency) refused a second export of the tenant before this row.
    await export_service.audit_export(session, actor, tenant_id, signed=signing)
    content: ContentBackends = request.app.state.content
    read_content = export_service.content_reader(
        await content.object_store(), await content.key_manager()
    )
    database: Database = request.app.state.database

    @asynccontextmanager
    async def archive() -> AsyncIterator[AsyncIterator[bytes]]:
        # Opened as the response is sent: the request's transaction has committed the audit
        # row (the snapshot holds it). The snapshot's transaction takes the stream lock for
        # the whole stream while the claim is still held, then lets the claim go: at no
        # moment is the tenant's export unclaimed.
        # One snapshot for the whole archive: rows committed meanwhile are not half in it.
        async with tenant_transaction(
            database.sessions, tenant_id, isolation="REPEATABLE READ"
        ) as snapshot:
            await export_service.take_export_stream(snapshot, tenant_id)
            await claim.release()
            await snapshot.execute(_IDLE_WHILE_STREAMING)
            chunks = export_service.stream_archive(
                snapshot, tenant_id, anchor_key=anchor_key, read_content=read_content
            )
            async with aclosing(chunks):
                yield chunks

    return IdleBoundedStreamingResponse(
        archive,
        idle_seconds=settings.TENANT_EXPORT_IDLE_SECONDS,
        media_type=ARCHIVE_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="tenant-{tenant_id}.tar"'},
    )
