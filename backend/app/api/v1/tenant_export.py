"""GET /tenant/export: everything the caller's tenant owns, as a streamed tar archive (admins)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import text

from app.api.deps import AdminActor, TenantSession
from app.api.responses import API_ERRORS
from app.content.backends import ContentBackends
from app.core.config import Settings
from app.database import Database
from app.database.session import make_sessionmaker, tenant_transaction
from app.services import audit_anchor as audit_anchor_service
from app.services import tenant_export as export_service

router = APIRouter(prefix="/tenant", tags=["tenant"], responses=API_ERRORS)

# A slow reader holds a snapshot (and a pooled connection) while it is idle: bounded.
_IDLE_WHILE_STREAMING = text(
    "SELECT set_config('idle_in_transaction_session_timeout', '300000', true)"
)

ARCHIVE_MEDIA_TYPE = "application/x-tar"


@router.get(
    "/export",
    summary="Export everything the tenant owns as a tar archive (admins)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The archive, format tenant-export/1 (docs/TENANT_LIFECYCLE.md): rows "
            "as JSON Lines, the audit chain and its head, decrypted content, a SHA-256 manifest.",
            "content": {ARCHIVE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def export_tenant(
    request: Request, session: TenantSession, actor: AdminActor
) -> StreamingResponse:
    """Stream the caller's tenant's archive; the export is audited before the first byte.

    The rows are read in one REPEATABLE READ snapshot as `app_runtime` under RLS, like every
    request. The API server holds no anchor signing key (docs/AUDIT_INTEGRITY.md), so its
    archives carry the chain's head unsigned unless one is configured; an operator's
    `export-tenant` signs it.
    """
    tenant_id = actor.own_tenant()
    settings: Settings = request.app.state.settings
    signing = settings.AUDIT_ANCHOR_SIGNING_KEY is not None
    anchor_key = audit_anchor_service.signing_key(settings) if signing else None
    await export_service.audit_export(session, actor, tenant_id, signed=signing)
    content: ContentBackends = request.app.state.content
    read_content = export_service.content_reader(
        await content.object_store(), await content.key_manager()
    )
    database: Database = request.app.state.database
    snapshots = make_sessionmaker(
        database.engine.execution_options(isolation_level="REPEATABLE READ")
    )

    async def archive() -> AsyncIterator[bytes]:
        async with tenant_transaction(snapshots, tenant_id) as snapshot:
            await snapshot.execute(_IDLE_WHILE_STREAMING)
            async for chunk in export_service.stream_archive(
                snapshot, tenant_id, anchor_key=anchor_key, read_content=read_content
            ):
                yield chunk

    return StreamingResponse(
        archive(),
        media_type=ARCHIVE_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="tenant-{tenant_id}.tar"'},
    )
