"""Documents: thin HTTP layer over app.services.documents."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from app.api.deps import CurrentContext, TenantSession, require_admin
from app.api.params import CursorCodecDep, PageDep, SettingsDep, json_object
from app.api.responses import AUTHENTICATED_ERRORS
from app.schemas import document as schemas
from app.schemas.common import NO_NUL_PATTERN
from app.services import documents as documents_service
from app.services.vector_search import SearchFilters

router = APIRouter(prefix="/documents", tags=["documents"], responses=AUTHENTICATED_ERRORS)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such document in your tenant (same for other tenants')."}
}


def _out(document: Any) -> schemas.Document:
    return schemas.Document.model_validate(document)


@router.post("", status_code=201, response_model=schemas.Document, summary="Register a document")
async def create_document(
    body: schemas.DocumentCreate, session: TenantSession, context: CurrentContext
) -> schemas.Document:
    """Register a document already stored in S3; its status starts as `processing`."""
    return _out(await documents_service.create_document(session, context, body))


@router.get("", response_model=schemas.DocumentPage, summary="List documents, newest first")
async def list_documents(
    session: TenantSession,
    context: CurrentContext,
    codec: CursorCodecDep,
    page: PageDep,
    status: Annotated[schemas.DocumentStatus | None, Query()] = None,
    content_type: Annotated[str | None, Query(max_length=255, pattern=NO_NUL_PATTERN)] = None,
    created_after: Annotated[datetime | None, Query()] = None,
    created_before: Annotated[datetime | None, Query()] = None,
    metadata: Annotated[
        str | None,
        Query(
            max_length=65536,
            description='JSON object the metadata must contain, e.g. {"department":"cardiology"}',
        ),
    ] = None,
    include_deleted: Annotated[bool, Query(description="Admins only")] = False,
) -> schemas.DocumentPage:
    """Cursor-paginated; filters by status, content type, creation time and metadata."""
    if include_deleted:
        require_admin(context)
    query = documents_service.DocumentQuery(
        status=status,
        content_type=content_type,
        created_after=created_after,
        created_before=created_before,
        metadata_contains=json_object(metadata, "metadata"),
        include_deleted=include_deleted,
    )
    rows, next_cursor = await documents_service.list_documents(session, context, query, page, codec)
    return schemas.DocumentPage(items=[_out(row) for row in rows], next_cursor=next_cursor)


@router.post(
    "/search", response_model=schemas.SearchResults, summary="Nearest documents to an embedding"
)
async def search_documents(
    body: schemas.SearchRequest, session: TenantSession, context: CurrentContext
) -> schemas.SearchResults:
    """The tenant's `k` nearest active documents by cosine distance, nearest first."""
    filters = None
    if body.filters is not None:
        filters = SearchFilters(
            status=body.filters.status,
            content_type=body.filters.content_type,
            metadata_contains=body.filters.metadata or {},
        )
    hits = await documents_service.search_documents(session, body.embedding, body.k, filters)
    return schemas.SearchResults(
        items=[schemas.SearchHit(document=_out(h.document), distance=h.distance) for h in hits]
    )


@router.get(
    "/{document_id}", response_model=schemas.Document, responses=_NOT_FOUND, summary="Get one"
)
async def get_document(
    document_id: uuid.UUID,
    session: TenantSession,
    context: CurrentContext,
    settings: SettingsDep,
    include_deleted: Annotated[bool, Query(description="Admins only")] = False,
) -> schemas.Document:
    """One document of the caller's tenant."""
    if include_deleted:
        require_admin(context)
    document = await documents_service.get_document(
        session, context, document_id, include_deleted=include_deleted
    )
    if settings.AUDIT_DOCUMENT_READS:
        await documents_service.record_read(session, context, document.id)
    return _out(document)


@router.patch(
    "/{document_id}", response_model=schemas.Document, responses=_NOT_FOUND, summary="Change"
)
async def update_document(
    document_id: uuid.UUID,
    body: schemas.DocumentUpdate,
    session: TenantSession,
    context: CurrentContext,
) -> schemas.Document:
    """Change status, metadata or embedding."""
    return _out(await documents_service.update_document(session, context, document_id, body))


@router.delete(
    "/{document_id}", status_code=204, responses=_NOT_FOUND, summary="Soft-delete a document"
)
async def delete_document(
    document_id: uuid.UUID, session: TenantSession, context: CurrentContext
) -> Response:
    """Soft delete: the row stays (retention) but disappears from lists, reads and search."""
    await documents_service.delete_document(session, context, document_id)
    return Response(status_code=204)


@router.post(
    "/{document_id}/restore",
    response_model=schemas.Document,
    responses=_NOT_FOUND,
    summary="Restore a soft-deleted document",
)
async def restore_document(
    document_id: uuid.UUID, session: TenantSession, context: CurrentContext
) -> schemas.Document:
    """Make a soft-deleted document active again."""
    return _out(await documents_service.restore_document(session, context, document_id))
