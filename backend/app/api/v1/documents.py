"""Documents: thin HTTP layer over app.services.documents."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import AdminActor, CurrentActor, TenantSession, read_only
from app.api.params import CursorCodecDep, PageDep, SettingsDep, metadata_filter
from app.api.responses import API_ERRORS, Responses, error_response
from app.schemas import document as schemas
from app.schemas.common import FILTER_LIMITS_TEXT, FILTER_MAX_BYTES, Text
from app.services import documents as documents_service

router = APIRouter(prefix="/documents", tags=["documents"], responses=API_ERRORS)

_NOT_FOUND: Responses = {
    404: error_response("No such document in your tenant (the same for other tenants' ids).")
}
_ADMINS_ONLY: Responses = {
    403: error_response("Only admins of the tenant may do this (or the token's user is inactive).")
}
_ADMINS_FOR_DELETED: Responses = {
    403: error_response("`include_deleted=true` is for admins; or the token's user is inactive.")
}


def _out(document: object) -> schemas.Document:
    return schemas.Document.model_validate(document)


@router.post("", status_code=201, response_model=schemas.Document, summary="Register a document")
async def create_document(
    body: schemas.DocumentCreate, session: TenantSession, actor: CurrentActor
) -> schemas.Document:
    """Register a document already stored in S3; its status starts as `processing`."""
    return _out(await documents_service.create_document(session, actor, body))


@router.get(
    "",
    response_model=schemas.DocumentPage,
    responses=_ADMINS_FOR_DELETED,
    summary="List documents, newest first",
)
@read_only()
async def list_documents(
    session: TenantSession,
    actor: CurrentActor,
    codec: CursorCodecDep,
    page: PageDep,
    status: Annotated[schemas.DocumentStatus | None, Query()] = None,
    content_type: Annotated[Text | None, Query(max_length=255)] = None,
    created_after: Annotated[datetime | None, Query()] = None,
    created_before: Annotated[datetime | None, Query()] = None,
    metadata: Annotated[
        str | None,
        Query(
            # Room for whitespace and \u escapes around a filter of FILTER_MAX_BYTES.
            max_length=4 * FILTER_MAX_BYTES,
            description="JSON object the metadata must contain (JSONB `@>`, GIN-indexed). "
            + FILTER_LIMITS_TEXT,
            examples=['{"department":"cardiology"}'],
        ),
    ] = None,
    include_deleted: Annotated[bool, Query(description="Admins only")] = False,
) -> schemas.DocumentPage:
    """Cursor-paginated; filters by status, content type, creation time and metadata."""
    query = documents_service.DocumentQuery(
        status=status,
        content_type=content_type,
        created_after=created_after,
        created_before=created_before,
        metadata_contains=metadata_filter(metadata, "metadata"),
        include_deleted=include_deleted,
    )
    rows, next_cursor = await documents_service.list_documents(session, actor, query, page, codec)
    return schemas.DocumentPage(items=[_out(row) for row in rows], next_cursor=next_cursor)


@router.post(
    "/search", response_model=schemas.SearchResults, summary="Nearest documents to an embedding"
)
@read_only()
async def search_documents(
    body: schemas.SearchRequest, session: TenantSession, actor: CurrentActor
) -> schemas.SearchResults:
    """The tenant's `k` nearest active documents by cosine distance, nearest first."""
    hits = await documents_service.search_documents(session, actor, body)
    return schemas.SearchResults(
        items=[schemas.SearchHit(document=_out(h.document), distance=h.distance) for h in hits]
    )


@router.get(
    "/{document_id}",
    response_model=schemas.Document,
    responses={**_NOT_FOUND, **_ADMINS_FOR_DELETED},
    summary="Get one document",
)
@read_only(unless=lambda settings: settings.AUDIT_DOCUMENT_READS)
async def get_document(
    document_id: uuid.UUID,
    session: TenantSession,
    actor: CurrentActor,
    settings: SettingsDep,
    include_deleted: Annotated[bool, Query(description="Admins only")] = False,
) -> schemas.Document:
    """One document of the caller's tenant (audited as `document.read` if AUDIT_DOCUMENT_READS)."""
    document = await documents_service.get_document(
        session,
        actor,
        document_id,
        include_deleted=include_deleted,
        audit_read=settings.AUDIT_DOCUMENT_READS,
    )
    return _out(document)


@router.patch(
    "/{document_id}",
    response_model=schemas.Document,
    responses=_NOT_FOUND,
    summary="Change a document's status, metadata or embedding",
)
async def update_document(
    document_id: uuid.UUID,
    body: schemas.DocumentUpdate,
    session: TenantSession,
    actor: CurrentActor,
) -> schemas.Document:
    """Only the fields sent change; the audit row names the fields that did."""
    return _out(await documents_service.update_document(session, actor, document_id, body))


@router.delete(
    "/{document_id}", status_code=204, responses=_NOT_FOUND, summary="Soft-delete a document"
)
async def delete_document(
    document_id: uuid.UUID, session: TenantSession, actor: CurrentActor
) -> Response:
    """Soft delete: the row stays (retention) but disappears from lists, reads and search."""
    await documents_service.delete_document(session, actor, document_id)
    return Response(status_code=204)


@router.post(
    "/{document_id}/restore",
    response_model=schemas.Document,
    responses={**_NOT_FOUND, **_ADMINS_ONLY},
    summary="Restore a soft-deleted document (admins)",
)
async def restore_document(
    document_id: uuid.UUID, session: TenantSession, actor: AdminActor
) -> schemas.Document:
    """Make a soft-deleted document active again (an active one is returned unchanged).

    Admins only, like every other way to reach soft-deleted rows: a member gets 403 before any
    lookup, so the answer says nothing about whether the id exists (docs/SECURITY.md).
    """
    return _out(await documents_service.restore_document(session, actor, document_id))
