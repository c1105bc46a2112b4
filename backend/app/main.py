"""The FastAPI application: create_app(), its lifespan, middleware and routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from opentelemetry.sdk.trace import SpanProcessor
from sqlalchemy.exc import SQLAlchemyError

from app.api.admission import CallerAdmission, TenantLimiter, export_limiter
from app.api.errors import install_error_handlers
from app.api.idempotency import IDEMPOTENCY_KEY_HEADER, REPLAYED_HEADER
from app.api.metrics import router as metrics_router
from app.api.openapi_security import declare_bearer_scheme
from app.api.v1.documents import CONTENT_UPLOAD_PATH
from app.api.v1.router import api_router, dev_router
from app.auth.dev_issuer import dev_issuer_for
from app.auth.tokens import TokenVerifier, build_token_verifier
from app.content.backends import ContentBackends
from app.core.config import PoolMode, Settings, settings_or_exit
from app.core.logging import configure_logging
from app.core.tracing import configure_tracing, instrument_engine
from app.database import Database
from app.database.engine import build_runtime_engine, resolve_targets
from app.database.notifications import NotificationListener, listener_conninfo
from app.database.replicas import CONSISTENCY_HEADER, open_read_routing
from app.database.safety import login_is_privileged, runtime_role_problems
from app.database.session import make_sessionmaker
from app.database.unavailable import describe_unavailable
from app.ingest.embeddings import EmbedderHolder
from app.middleware.client_address import TrustedProxyClientAddress
from app.middleware.consistency_token import ConsistencyTokenHeader
from app.middleware.edge_limits import EdgeLimits
from app.middleware.metrics import RequestMetrics
from app.middleware.no_store import PhiResponseHeaders
from app.middleware.request_id import RequestIdMiddleware
from app.middleware.tenant_context import AuthorizationHeaderGuard
from app.middleware.tracing import trace_requests
from app.services import caller_cache
from app.services import health as health_service

logger = logging.getLogger(__name__)


class UnsafeRuntimeRoleError(RuntimeError):
    """The role request handlers would run as is not bound by Row-Level Security."""


async def open_database(settings: Settings) -> Database:
    """Connect as the runtime role and refuse to go on if that role could bypass RLS."""
    targets = resolve_targets(settings)
    engine = build_runtime_engine(targets, settings)
    database = Database(
        targets=targets,
        engine=engine,
        sessions=make_sessionmaker(engine),
        reads=open_read_routing(targets, settings, engine),
    )
    try:
        async with engine.connect() as connection:
            problems = await runtime_role_problems(connection)
            privileged_login = await login_is_privileged(connection)
            await connection.rollback()
    except SQLAlchemyError as exc:
        # Start anyway: /health/ready reports 503 until the database answers and the checks pass.
        logger.warning(
            "database not reachable at start-up",
            extra={
                "error": type(exc).__name__,
                "cause": describe_unavailable(targets.runtime_url, exc),
            },
        )
        return database
    if problems:
        await engine.dispose()
        raise UnsafeRuntimeRoleError("refusing to start: " + "; ".join(problems))
    if not targets.runtime_logs_in and privileged_login:
        logger.warning(
            "APP_RUNTIME_PASSWORD is not set: requests switch to app_runtime with SET ROLE from a"
            " login that can bypass RLS, so an injected RESET ROLE would regain that power;"
            " set APP_RUNTIME_PASSWORD and migrate to log in as app_runtime instead"
        )
    return database


def caller_listener(
    database: Database, settings: Settings, cache: caller_cache.CallerCache
) -> NotificationListener | None:
    """The listener that keeps `cache` fresh (app.services.caller_cache); None behind pgbouncer.

    Until it is up, and whenever it is down, the cache serves nothing. Through pgbouncer in
    transaction mode a LISTEN would stay on whichever server connection ran it, which the
    pooler then hands to other clients: notifications would be lost or land elsewhere. So in
    that mode no listener starts and every request looks its caller up (fails closed).
    """
    if settings.DATABASE_POOL_MODE is PoolMode.TRANSACTION:
        logger.info("caller cache off: DATABASE_POOL_MODE=transaction cannot LISTEN")
        return None
    return NotificationListener(
        listener_conninfo(database.targets, settings),
        caller_cache.CHANNEL,
        cache,
        heartbeat_sql=caller_cache.SYNC_SQL,
    )


def create_app(
    settings: Settings | None = None,
    database: Database | None = None,
    token_verifier: TokenVerifier | None = None,
    content: ContentBackends | None = None,
    span_processor: SpanProcessor | None = None,
) -> FastAPI:
    """Build the application. Tests pass their own settings, database, token verifier and
    content backends (object store and key manager); tests and benchmarks may pass a span
    processor to trace into (its exporter wrapped in app.core.tracing.PhiSafeSpanExporter)."""
    settings = settings or settings_or_exit()
    configure_logging(settings.LOG_LEVEL, json=settings.is_production)
    tracer_provider = configure_tracing(settings, span_processor)
    dev_issuer = dev_issuer_for(settings) if settings.dev_issuer_enabled else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = database is None
        app.state.database = database or await open_database(settings)
        if tracer_provider is not None:
            instrument_engine(app.state.database.engine, tracer_provider)
        listener = caller_listener(app.state.database, settings, app.state.caller_cache)
        app.state.caller_listener = listener
        if listener is not None:
            listener.start()
        try:
            yield
        finally:
            if listener is not None:
                await listener.stop()
            await app.state.content.close()
            await app.state.embedder.close()
            if owned:
                await app.state.database.dispose()

    app = FastAPI(
        title="Tenant Docs API",
        version="0.1.0",
        description="Multi-tenant document platform: every row is isolated per tenant by "
        "PostgreSQL Row-Level Security.",
        lifespan=lifespan,
        # FastAPI's own telemetry (0.165+) would add a second server span as soon as a tracer
        # provider is set, with the path and query string as attributes: ours is
        # app/middleware/tracing.py, and the request metrics are Prometheus'.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.dev_issuer = dev_issuer
    app.state.token_verifier = token_verifier or build_token_verifier(
        settings, dev_issuer=dev_issuer
    )
    if database is not None:
        app.state.database = database
        if tracer_provider is not None:
            instrument_engine(database.engine, tracer_provider)
    app.state.tenant_limiter = TenantLimiter.from_settings(settings)
    app.state.caller_admission = CallerAdmission(app.state.tenant_limiter)
    app.state.export_limiter = export_limiter(settings)
    app.state.readiness_probe = health_service.ReadinessProbe()
    app.state.caller_cache = caller_cache.CallerCache()
    # Opened on first use: a process that never touches content starts no embedded server.
    app.state.content = content or ContentBackends(settings)
    app.state.embedder = EmbedderHolder(settings)  # text search embeds its query (issue 19)
    install_error_handlers(app)
    # Innermost of the middlewares (added first), so their 4xx carry CORS and request id; the
    # Authorization guard (outside the edge limits) answers before any body is read.
    app.add_middleware(
        EdgeLimits,
        max_body_bytes=settings.MAX_REQUEST_BODY_BYTES,
        max_json_depth=settings.MAX_JSON_DEPTH,
        streamed_bodies=[("PUT", CONTENT_UPLOAD_PATH)],
    )
    app.add_middleware(AuthorizationHeaderGuard)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.ALLOWED_ORIGINS,
        allow_credentials=False,
        allow_methods=["GET", "POST", "PATCH", "DELETE"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "X-Request-ID",
            IDEMPOTENCY_KEY_HEADER,
            CONSISTENCY_HEADER,
        ],
        expose_headers=["X-Request-ID", REPLAYED_HEADER, CONSISTENCY_HEADER],
    )
    app.add_middleware(RequestMetrics)
    app.add_middleware(ConsistencyTokenHeader)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(PhiResponseHeaders)
    # Outermost: every layer inside (rate limits, the request log, the audit rows) sees the
    # client's address, not a proxy's.
    app.add_middleware(
        TrustedProxyClientAddress,
        trusted_proxies=settings.TRUSTED_PROXIES,
        client_header=settings.CLIENT_IP_HEADER,
    )
    app.include_router(api_router)
    declare_bearer_scheme(app)  # the token is checked by plain calls, not a security dependency
    if settings.METRICS_TOKEN is not None:
        app.include_router(metrics_router)
    if tracer_provider is not None:
        # Around everything (the 500 handler too): the request's span is current in every
        # layer, so log lines carry its id. GET /metrics is not traced.
        trace_requests(
            app, tracer_provider.get_tracer("app.middleware.tracing"), frozenset({"/metrics"})
        )
    if dev_issuer is not None:
        app.include_router(dev_router)
    return app
