"""Benchmark-only twins of the API's routes: the same queries, no authentication, no context.

`make bench-http` (bench/http_cost.py) times each authenticated route next to its twin here,
in the same server, to measure what authentication, the tenant context and RLS cost over
HTTP. `create_app` here is the product's `app.main.create_app()` with the twins mounted
under /bench/baseline; it refuses production settings: these routes read and write any
tenant's documents for whoever names it in a header. The product package knows nothing of it.

The twins run the same service functions (so the same SQL, with the services' explicit
`WHERE tenant_id = …`) in one transaction each, but as the provisioning role `app_admin`,
set as a start-up parameter of the connection (no round trip). The runtime role can't be the
baseline: without a tenant context RLS shows it no row at all, and with one it is no longer
"no context". `app_admin` has BYPASSRLS, so no policy is planned or evaluated: what remains is
exactly the work minus auth, the caller lookup, the context and RLS.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import main
from app.api.params import CursorCodecDep, PageDep
from app.api.v1 import documents as documents_api
from app.core.config import Settings, SettingsError, settings_or_exit
from app.core.errors import ForbiddenError
from app.core.tracing import PhiSafeSpanExporter
from app.database import Database, vector_search
from app.database.engine import build_engine
from app.database.roles import ADMIN_ROLE
from app.database.session import make_sessionmaker
from app.middleware.metrics import RequestMetrics
from app.models import Document
from app.schemas import document as document_schemas
from app.schemas.common import page_of
from app.schemas.me import Me
from app.services import callers as callers_service
from app.services import documents as documents_service
from app.services import me as me_service
from app.services.actor import Actor
from app.services.callers import NO_ACCESS_MESSAGE

BASELINE_APPLICATION_NAME = "tenant-docs-bench-baseline"
# on: traces into an in-process sink and request metrics; off: neither (bench/http_cost.py).
BENCH_TELEMETRY_VARIABLE = "BENCH_TELEMETRY"


@asynccontextmanager
async def _baseline_engine(app: FastAPI) -> AsyncIterator[None]:
    database: Database = app.state.database
    settings: Settings = app.state.settings
    # Same pool bounds as the runtime engine, so neither side gets more connections.
    engine = build_engine(
        database.targets.login_url,
        settings,
        role=ADMIN_ROLE,
        application_name=BASELINE_APPLICATION_NAME,
    )
    app.state.baseline_sessions = make_sessionmaker(engine)
    try:
        yield
    finally:
        await engine.dispose()


router = APIRouter(prefix="/bench/baseline", include_in_schema=False, lifespan=_baseline_engine)


class DiscardingSpanExporter(SpanExporter):
    """The in-process sink of `make bench-http ARGS=--telemetry`: spans are made, batched,
    filtered (PhiSafeSpanExporter) and then dropped, so only the app's own cost is timed."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Accept and drop."""
        return SpanExportResult.SUCCESS


def _telemetry_variant(app: FastAPI) -> None:
    """BENCH_TELEMETRY=off: the request-metrics middleware removed (the counters deep in the
    services stay: a few hundred ns). on (set by the caller): tracing into the sink."""
    if os.environ.get(BENCH_TELEMETRY_VARIABLE) == "off":
        app.user_middleware = [m for m in app.user_middleware if m.cls is not RequestMetrics]


def create_app(settings: Settings | None = None, database: Database | None = None) -> FastAPI:
    """The product app plus the twins (uvicorn `bench.baseline:create_app --factory`)."""
    settings = settings or settings_or_exit()
    if settings.is_production:
        raise SettingsError(
            "bench baseline: refused when ENVIRONMENT=production"
            " (benchmark routes that skip authentication)"
        )
    processor = None
    if os.environ.get(BENCH_TELEMETRY_VARIABLE) == "on":
        processor = BatchSpanProcessor(PhiSafeSpanExporter(DiscardingSpanExporter()))
    app = main.create_app(settings, database, span_processor=processor)
    _telemetry_variant(app)
    app.include_router(router)
    return app


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    # No tenant context: app_admin (BYPASSRLS) needs none; the services' filters still apply.
    async with request.app.state.baseline_sessions() as session, session.begin():
        yield session


async def _actor(  # async, as the product's dependencies: no thread-pool hand-off
    request: Request,
    tenant_id: Annotated[uuid.UUID, Header(alias="X-Bench-Tenant")],
    user_id: Annotated[uuid.UUID, Header(alias="X-Bench-User")],
) -> Actor:
    return Actor.user(
        tenant_id=tenant_id,
        user_id=user_id,
        role="admin",
        request_id=getattr(request.state, "request_id", None),
        client_ip=request.client.host if request.client else None,
    )


# scope="function": committed before the response, as the real request transaction is.
BaselineSession = Annotated[AsyncSession, Depends(_session, scope="function")]
BaselineContext = Annotated[Actor, Depends(_actor)]


@router.get("/me", response_model=Me)
async def read_me(
    session: BaselineSession,
    context: BaselineContext,
    subject: Annotated[str, Header(alias="X-Bench-Subject")],
) -> Me:
    """GET /api/v1/me's query: the caller lookup (its answer is /me's), without the context."""
    parameters = {"tenant_id": context.tenant_id, "subject": subject}
    row = (await session.execute(callers_service.CALLER_QUERY, parameters)).first()
    if row is None:
        raise ForbiddenError(NO_ACCESS_MESSAGE)
    return me_service.me_of(callers_service.caller_from_row(context.tenant_id, row))


@router.post("/documents", status_code=201, response_model=document_schemas.Document)
async def create_document(
    body: document_schemas.DocumentCreate, session: BaselineSession, context: BaselineContext
) -> document_schemas.Document:
    """POST /api/v1/documents' insert and audit row."""
    document = await documents_service.create_document(session, context, body)
    return document_schemas.Document.model_validate(document)


@router.get("/documents", response_model=document_schemas.DocumentPage)
async def list_documents(
    session: BaselineSession,
    context: BaselineContext,
    codec: CursorCodecDep,
    page: PageDep,
    filters: Annotated[document_schemas.DocumentListFilters, Query()],
) -> document_schemas.DocumentPage:
    """GET /api/v1/documents' query, with the route's own query parameters (reading them is
    the route's work, not authentication's: FastAPI spends ~15 µs per declared parameter)."""
    query = documents_api.document_query(filters)
    rows, next_cursor = await documents_service.list_documents(session, context, query, page, codec)
    return page_of(document_schemas.DocumentPage, rows, next_cursor)


@router.post("/documents/search", response_model=document_schemas.SearchResults)
async def search_documents(
    body: document_schemas.SearchRequest, session: BaselineSession, context: BaselineContext
) -> document_schemas.SearchResults:
    """POST /api/v1/documents/search's query, with the tenant named explicitly.

    The search service names no tenant (RLS scopes it), so as app_admin it would search every
    tenant; this is an exact scan with `tenant_id = …`. NOT like-for-like since the
    `search_documents()` function: for a tenant that large the route walks the HNSW index,
    and app_admin may not execute the function (EXECUTE is granted to app_runtime only), so
    bench/http_cost.py only checks both return k hits (docs/PERFORMANCE.md).
    """
    embedding = vector_search.validate_embedding(body.embedding)
    distance = Document.embedding_vector.cosine_distance(embedding).label("distance")
    statement = (
        select(Document, distance)
        .where(
            Document.tenant_id == context.tenant_id,
            Document.embedding_vector.is_not(None),
            Document.deleted_at.is_(None),
        )
        .order_by(distance, Document.id)
        .limit(vector_search.validate_k(body.k))
    )
    rows = (await session.execute(statement)).all()
    return document_schemas.SearchResults(
        items=[
            document_schemas.SearchHit(
                document=document_schemas.Document.model_validate(row[0]), distance=float(row[1])
            )
            for row in rows
        ]
    )


@router.get("/documents/{document_id}", response_model=document_schemas.Document)
async def get_document(
    request: Request,
    document_id: uuid.UUID,
    session: BaselineSession,
    context: BaselineContext,
    include_deleted: Annotated[bool, Query()] = False,
) -> document_schemas.Document:
    """GET /api/v1/documents/{id}'s query, with the route's query parameter and setting."""
    settings: Settings = request.app.state.settings
    document = await documents_service.get_document(
        session,
        context,
        document_id,
        include_deleted=include_deleted,
        audit_read=settings.AUDIT_DOCUMENT_READS,
    )
    return document_schemas.Document.model_validate(document)
