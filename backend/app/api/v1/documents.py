"""Documents: thin HTTP layer over app.services.documents."""

from __future__ import annotations

import re
import uuid
from datetime import UTC
from email.utils import format_datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.api.deps import AdminTenant, Content, Sessions, StreamingActor, Tenant, read_only
from app.api.idempotency import IdempotentRoute
from app.api.params import CursorCodecDep, PageDep, SettingsDep, metadata_filter
from app.api.responses import API_ERRORS, Responses, error_response
from app.schemas import document as schemas
from app.schemas.common import page_of
from app.services import document_content as document_content_service
from app.services import documents as documents_service

router = APIRouter(
    route_class=IdempotentRoute, prefix="/documents", tags=["documents"], responses=API_ERRORS
)

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
async def create_document(body: schemas.DocumentCreate, tenant: Tenant) -> schemas.Document:
    """Register a document already stored in S3; its status starts as `processing`."""
    return _out(await documents_service.create_document(tenant.session, tenant.actor, body))


@router.get(
    "",
    response_model=schemas.DocumentPage,
    responses=_ADMINS_FOR_DELETED,
    summary="List documents, newest first",
)
@read_only()
async def list_documents(
    tenant: Tenant,
    codec: CursorCodecDep,
    page: PageDep,
    filters: Annotated[schemas.DocumentListFilters, Query()],
) -> schemas.DocumentPage:
    """Cursor-paginated; filters by status, content type, creation time and metadata."""
    rows, next_cursor = await documents_service.list_documents(
        tenant.session, tenant.actor, document_query(filters), page, codec
    )
    return page_of(schemas.DocumentPage, rows, next_cursor)


def document_query(filters: schemas.DocumentListFilters) -> documents_service.DocumentQuery:
    """The service's query for GET /documents' filters (422 for a malformed metadata filter)."""
    return documents_service.DocumentQuery(
        status=filters.status,
        content_type=filters.content_type,
        created_after=filters.created_after,
        created_before=filters.created_before,
        metadata_contains=metadata_filter(filters.metadata, "metadata"),
        include_deleted=filters.include_deleted,
    )


@router.post(
    "/search", response_model=schemas.SearchResults, summary="Nearest documents to an embedding"
)
@read_only()
async def search_documents(
    body: schemas.SearchRequest, tenant: Tenant, request: Request
) -> schemas.SearchResults:
    """The tenant's `k` nearest active documents by cosine distance, nearest first: to an
    `embedding`, or to a text `query` (ranked by each document's best chunk, with its text)."""
    if body.query is not None:
        found = await documents_service.search_documents_by_text(
            tenant.session,
            tenant.actor,
            request.app.state.content,
            await request.app.state.embedder.get(),
            body.query,
            body.k,
            documents_service.search_filters(body),
        )
        return schemas.SearchResults(
            items=[
                schemas.SearchHit(document=_out(h.document), distance=h.distance, snippet=h.snippet)
                for h in found
            ]
        )
    hits = await documents_service.search_documents(tenant.session, tenant.actor, body)
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
    tenant: Tenant,
    include_deleted: Annotated[bool, Query(description="Admins only")] = False,
) -> schemas.Document:
    """One document of the caller's tenant (audited as `document.read` if AUDIT_DOCUMENT_READS)."""
    document = await documents_service.get_document(
        tenant.session,
        tenant.actor,
        document_id,
        include_deleted=include_deleted,
        audit_read=tenant.settings.AUDIT_DOCUMENT_READS,
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
    tenant: Tenant,
) -> schemas.Document:
    """Only the fields sent change; the audit row names the fields that did."""
    document = await documents_service.update_document(
        tenant.session, tenant.actor, document_id, body
    )
    return _out(document)


@router.delete(
    "/{document_id}", status_code=204, responses=_NOT_FOUND, summary="Soft-delete a document"
)
async def delete_document(document_id: uuid.UUID, tenant: Tenant) -> Response:
    """Soft delete: the row stays (retention) but disappears from lists, reads and search."""
    await documents_service.delete_document(tenant.session, tenant.actor, document_id)
    return Response(status_code=204)


@router.post(
    "/{document_id}/restore",
    response_model=schemas.Document,
    responses={**_NOT_FOUND, **_ADMINS_ONLY},
    summary="Restore a soft-deleted document (admins)",
)
async def restore_document(document_id: uuid.UUID, tenant: AdminTenant) -> schemas.Document:
    """Make a soft-deleted document active again (an active one is returned unchanged).

    Admins only, like every other way to reach soft-deleted rows: a member gets 403 before any
    lookup, so the answer says nothing about whether the id exists (docs/SECURITY.md).
    """
    document = await documents_service.restore_document(tenant.session, tenant.actor, document_id)
    return _out(document)


# Content ----------------------------------------------------------------------------------

CONTENT_PATH = "/{document_id}/content"
# The full path of an upload, for the edge limits (app.main): that body streams past them.
CONTENT_UPLOAD_PATH = re.compile(r"/api/v1/documents/[^/]+/content")
_CONTENT_EXAMPLE = "%PDF-1.7 ... (the document's bytes, exactly as uploaded)"
_CONTENT_ERRORS: Responses = {
    **_NOT_FOUND,
    409: error_response(
        "Upload: the document already has content, is not `processing`, or your tenant has no"
        " key yet. Download: the document has no content yet."
    ),
    500: error_response("The stored content failed its integrity check; no bytes are sent."),
    503: error_response(
        "Object storage or the KMS is unavailable (`dependency`: `object_storage` or `kms`);"
        " nothing was stored or changed."
    ),
}


@router.put(
    CONTENT_PATH,
    response_model=schemas.Document,
    responses={
        **_CONTENT_ERRORS,
        413: error_response(
            "The content (Content-Length or registered size) is larger than"
            " MAX_DOCUMENT_CONTENT_BYTES."
        ),
        415: error_response("Content-Type is not the media type the document was registered with."),
        422: error_response("The body's length is not the document's registered `size_bytes`."),
    },
    summary="Upload a document's content (streamed, encrypted with your tenant's key)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The file's bytes, exactly `size_bytes` of them, with the"
            " Content-Type the document was registered with.",
            "content": {
                "*/*": {
                    "schema": {"type": "string", "format": "binary"},
                    "example": _CONTENT_EXAMPLE,
                }
            },
        }
    },
)
async def upload_content(
    document_id: uuid.UUID,
    request: Request,
    actor: StreamingActor,
    sessions: Sessions,
    content: Content,
    settings: SettingsDep,
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
    content_length: Annotated[int | None, Header(include_in_schema=False, ge=0)] = None,
) -> schemas.Document:
    """Stream the document's bytes in; they are stored only encrypted, under a fresh data key
    wrapped by your tenant's own key. The SHA-256 is recorded (it is the download's ETag), the
    status moves from `processing` to `completed`, and the upload is audited
    (`document.content_upload`). Content is written once; a failed upload changes nothing
    and may be retried."""
    document = await document_content_service.upload_content(
        sessions,
        actor,
        document_id,
        request.stream(),
        declared_type=content_type,
        declared_length=content_length,
        max_bytes=settings.MAX_DOCUMENT_CONTENT_BYTES,
        content=content,
    )
    return _out(document)


@router.get(
    CONTENT_PATH,
    response_class=StreamingResponse,
    responses={
        **_CONTENT_ERRORS,
        200: {
            "description": "The document's bytes, decrypted and verified as they stream.",
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "example": _CONTENT_EXAMPLE,
                }
            },
            "headers": {
                "Content-Type": {"description": "The document's registered content type."},
                "Content-Disposition": {
                    "description": "attachment; filename=\"…\"; filename*=UTF-8''…",
                },
                "ETag": {"description": "The content's SHA-256, quoted."},
                "Last-Modified": {"description": "When the content was uploaded."},
            },
        },
        304: {"description": "If-None-Match named the current ETag: your copy is current."},
    },
    summary="Download a document's content (decrypted, verified)",
)
async def download_content(
    document_id: uuid.UUID,
    tenant: Tenant,
    content: Content,
    if_none_match: Annotated[
        str | None,
        Header(description="An ETag from an earlier download: 304 if it is still current."),
    ] = None,
) -> Response:
    """The document's bytes, decrypted with its data key and verified segment by segment.
    Every download is audited (`document.content_download`) in the same transaction as the
    lookup, committed before the first byte is sent (a 304 sends no content and is not).
    Should the stored content fail its integrity check after the first bytes, the response is
    cut short (never wrong bytes)."""
    session, actor = tenant.session, tenant.actor
    document = await document_content_service.get_document_with_content(session, actor, document_id)
    etag = f'"{document.content_sha256}"'
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    download = await document_content_service.open_download(
        session, actor, document, await content.object_store(), await content.key_manager()
    )
    assert document.content_uploaded_at is not None
    return StreamingResponse(
        download.chunks,
        media_type=document.content_type,
        headers={
            "Content-Length": str(document.size_bytes),
            "Content-Disposition": _attachment(document.filename),
            "ETag": etag,
            "Last-Modified": format_datetime(
                document.content_uploaded_at.astimezone(UTC), usegmt=True
            ),
        },
    )


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.2: `*`, or any listed tag equal to ours under weak comparison."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _attachment(filename: str) -> str:
    """Content-Disposition with an ASCII fallback and the exact name (RFC 6266, RFC 8187)."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
