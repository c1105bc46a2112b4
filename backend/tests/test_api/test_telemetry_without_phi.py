"""Telemetry carries no PHI (issue 21): the quick start's flow runs with traces, logs and metrics
captured, and none of its metadata values, emails, filenames, embeddings, query texts or tokens
appears in any of them.

Spans are captured where they leave the process (the exporter, behind PhiSafeSpanExporter),
logs as the JSON lines production writes, at DEBUG (the most a deployment can turn on), and
metrics as GET /metrics serves them.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.backends import ContentBackends
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.config import Settings
from app.core.logging import build_formatter
from app.core.tracing import TENANT_ID_ATTRIBUTE
from app.database import Database
from app.database.engine import build_runtime_engine, targets_for
from app.database.session import make_sessionmaker
from app.main import create_app
from app.middleware.tracing import RequestTracing
from testkit import database_harness as harness
from testkit.factories import give_tenant_key
from testkit.tracing import CapturedSpans
from tests.conftest import MakeCaller, MigratedDatabase
from tests.test_api.conftest import API, FIRST_AXIS

METRICS_TOKEN = "metrics-token-for-the-phi-test"

# Values that must never leave the process through telemetry. Each is unique to this test, so
# finding one anywhere is a leak, not a coincidence.
MARKER = uuid.uuid4().hex[:10]
METADATA_VALUE = f"hypertension-{MARKER}"
METADATA_FILTER_VALUE = f"oncology-{MARKER}"
FILENAME = f"jane-doe-mri-{MARKER}.pdf"
S3_KEY = f"patients/jane-doe/{MARKER}.pdf"
EMAIL = f"jane.doe.{MARKER}@clinic.example"
FULL_NAME = f"Jane Doe {MARKER}"
# An embedding value written out as Python (and pgvector's text form) writes it.
EMBEDDING_VALUE = 0.0123456789012345
QUERY_VALUE = 0.0234567890123456
CONTENT = f"%PDF-1.7 patient Jane Doe {MARKER} diagnosis {METADATA_VALUE}".encode()


@dataclass
class Captured:
    """What the app emitted: finished spans, log lines and the metrics page."""

    spans: list[ReadableSpan]
    logs: str
    metrics: str


def _embedding(value: float) -> list[float]:
    values = [0.0] * 1024
    values[FIRST_AXIS + 3] = 1.0
    values[FIRST_AXIS + 4] = value
    return values


def _span_text(span: ReadableSpan) -> str:
    """Everything a span carries, as text."""
    return json.dumps(
        {
            "name": span.name,
            "attributes": dict(span.attributes or {}),
            "events": [(e.name, dict(e.attributes or {})) for e in span.events],
            "links": [dict(link.attributes or {}) for link in span.links],
            "status": span.status.description,
            "resource": dict(span.resource.attributes),
        },
        default=str,
    )


@pytest.fixture
async def traced_client(
    settings: Settings,
    migrated_db: MigratedDatabase,
    content_backends: ContentBackends,
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter, io.StringIO, Settings]]:
    """The app with tracing into memory, metrics behind a token and JSON logs at DEBUG."""
    app_settings = settings.model_copy(
        update={
            "METRICS_TOKEN": SecretStr(METRICS_TOKEN),
            "LOG_LEVEL": "DEBUG",
            "OTEL_SPAN_TENANT_ID": False,
        }
    )
    captured = CapturedSpans()
    exporter = captured.exporter
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, app_settings)  # its own: traced only here
    database = Database(targets=targets, engine=engine, sessions=make_sessionmaker(engine))
    app = create_app(app_settings, database, content=content_backends, span_processor=captured)
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setFormatter(build_formatter(json=True))
    logging.getLogger().addHandler(handler)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client, exporter, logs, app_settings
    finally:
        logging.getLogger().removeHandler(handler)
        captured.close()
        await engine.dispose()


async def _quick_start(
    client: httpx.AsyncClient,
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
    key_manager: OpenBaoTransitKeyManager,
) -> tuple[list[str], uuid.UUID]:
    """The quick start and more: users, documents, content, search, filters, changes, errors.
    Returns the tokens used (they must not leak either) and the tenant's id."""
    admin = await make_caller(role="admin")
    await give_tenant_key(admin_sessions, key_manager, admin.tenant.id)
    headers = {**admin.headers, "Idempotency-Key": str(uuid.uuid4())}
    document = {
        "filename": FILENAME,
        "content_type": "application/pdf",
        "size_bytes": len(CONTENT),
        "s3_bucket": "phi-bucket",
        "s3_key": S3_KEY,
        "metadata": {"diagnosis": METADATA_VALUE, "department": METADATA_FILTER_VALUE},
        "embedding": _embedding(EMBEDDING_VALUE),
    }
    created = await client.post(f"{API}/documents", json=document, headers=headers)
    assert created.status_code == 201, created.text
    replayed = await client.post(f"{API}/documents", json=document, headers=headers)
    assert replayed.headers["idempotent-replayed"] == "true"
    document_id = created.json()["id"]
    content_url = f"{API}/documents/{document_id}/content"
    uploaded = await client.put(
        content_url,
        content=CONTENT,
        headers={
            **admin.headers,
            "Content-Type": "application/pdf",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert uploaded.status_code == 200, uploaded.text
    downloaded = await client.get(content_url, headers=admin.headers)
    assert downloaded.content == CONTENT
    listed = await client.get(
        f"{API}/documents",
        params={"metadata": json.dumps({"department": METADATA_FILTER_VALUE})},
        headers=admin.headers,
    )
    assert [item["id"] for item in listed.json()["items"]] == [document_id]
    searched = await client.post(
        f"{API}/documents/search",
        json={
            "embedding": _embedding(QUERY_VALUE),
            "k": 3,
            "filters": {"metadata": {"diagnosis": METADATA_VALUE}},
        },
        headers=admin.headers,
    )
    assert searched.status_code == 200, searched.text
    assert searched.json()["items"][0]["document"]["id"] == document_id
    patched = await client.patch(
        f"{API}/documents/{document_id}",
        json={"metadata": {"diagnosis": METADATA_VALUE, "note": FULL_NAME}},
        headers=admin.headers,
    )
    assert patched.status_code == 200, patched.text
    user = {"email": EMAIL, "full_name": FULL_NAME, "role": "member", "external_idp_id": MARKER}
    added = await client.post(f"{API}/users", json=user, headers=admin.headers)
    assert added.status_code == 201, added.text
    # Errors whose database or validation messages quote the values: a duplicate email (a
    # unique violation) and an invalid one.
    duplicate = await client.post(f"{API}/users", json=user, headers=admin.headers)
    assert duplicate.status_code == 409, duplicate.text
    invalid = {**user, "email": f"{EMAIL}@@invalid", "external_idp_id": f"other-{MARKER}"}
    assert (
        await client.post(f"{API}/users", json=invalid, headers=admin.headers)
    ).status_code == 422
    users = await client.get(f"{API}/users", headers=admin.headers)
    assert EMAIL in users.text
    audit = await client.get(f"{API}/audit-logs", headers=admin.headers)
    assert audit.status_code == 200
    me = await client.get(f"{API}/me", headers=admin.headers)
    assert me.status_code == 200
    bad_token = await client.get(f"{API}/me", headers={"Authorization": f"Bearer x{MARKER}"})
    assert bad_token.status_code == 401
    return [admin.headers["Authorization"].removeprefix("Bearer "), f"x{MARKER}"], admin.tenant.id


def _record_what_a_library_might() -> None:
    """A span carrying values the way instrumentations record them (a URL with its query
    string, a client address, an exception message quoting a row, a status text), through the
    same provider and exporter: our own spans record none of these, so this is what shows that
    PhiSafeSpanExporter drops them."""
    sampled_caller = propagate.extract(
        {"traceparent": "00-1bf7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"}
    )
    tracer = trace.get_tracer("a.library.instrumentation")
    with tracer.start_as_current_span(
        "GET /api/v1/documents",
        context=sampled_caller,
        attributes={
            "http.route": "library-span",
            "http.url": f"http://testserver{API}/documents?metadata={METADATA_FILTER_VALUE}",
            "url.query": f"metadata={METADATA_FILTER_VALUE}",
            "url.path": f"{API}/users/{EMAIL}",
            "client.address": "203.0.113.7",
        },
    ) as span:
        span.record_exception(ValueError(f"duplicate key (email)=({EMAIL})"))
        span.set_status(Status(StatusCode.ERROR, f"row for {FULL_NAME}"))


async def _capture(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter, logs: io.StringIO
) -> Captured:
    page = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert page.status_code == 200, page.text
    return Captured(list(exporter.get_finished_spans()), logs.getvalue(), page.text)


async def test_quick_start_leaves_no_phi_in_spans_logs_or_metrics(
    traced_client: tuple[httpx.AsyncClient, InMemorySpanExporter, io.StringIO, Settings],
    make_caller: MakeCaller,
    admin_sessions: async_sessionmaker[AsyncSession],
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    client, exporter, logs, _ = traced_client
    tokens, tenant_id = await _quick_start(client, make_caller, admin_sessions, key_manager)
    _record_what_a_library_might()
    captured = await _capture(client, exporter, logs)

    # The telemetry is there (an empty capture would pass trivially).
    routes = {span.attributes.get("http.route") for span in captured.spans if span.attributes}
    assert {f"{API}/documents", f"{API}/documents/search", f"{API}/users"} <= routes
    assert "library-span" in routes
    statements = [
        str(span.attributes["db.statement"])
        for span in captured.spans
        if span.attributes and "db.statement" in span.attributes
    ]
    assert any("INSERT INTO documents" in s for s in statements)
    assert any("%(" in s for s in statements)  # placeholders, not values
    rpc_methods = {span.attributes.get("rpc.method") for span in captured.spans if span.attributes}
    assert {"PutObject", "GetObject"} <= rpc_methods or {"UploadPart", "GetObject"} <= rpc_methods
    lines = [json.loads(line) for line in captured.logs.splitlines()]
    # Every request's log line names its trace (GET /metrics is not traced).
    request_lines = [
        line for line in lines if line["message"] == "request" and line["path"].startswith(API)
    ]
    assert request_lines, captured.logs[:2000]
    assert all(line.get("trace_id") and line["request_id"] for line in request_lines)
    assert 'route="/api/v1/documents/{document_id}"' in captured.metrics
    assert "vector_search_strategy_total" in captured.metrics
    assert "audit_insert_seconds_count" in captured.metrics
    assert all(TENANT_ID_ATTRIBUTE not in (span.attributes or {}) for span in captured.spans)
    spans_text = "\n".join(_span_text(span) for span in captured.spans)

    forbidden = {
        "metadata value": METADATA_VALUE,
        "metadata filter value": METADATA_FILTER_VALUE,
        "filename": FILENAME,
        "object key": S3_KEY,
        "content": CONTENT.decode(),
        "email": EMAIL,
        "email (case-folded)": EMAIL.casefold(),
        "full name": FULL_NAME,
        "embedding value": repr(EMBEDDING_VALUE),
        "query embedding value": repr(QUERY_VALUE),
        "embedding value (short)": "0.012345678",
        "query embedding value (short)": "0.023456789",
    }
    forbidden |= {f"token {i}": token for i, token in enumerate(tokens)}
    for where, text in (
        ("spans", spans_text),
        ("logs", captured.logs),
        ("metrics", captured.metrics),
    ):
        leaked = sorted(name for name, value in forbidden.items() if value in text)
        assert leaked == [], (
            f"{where} carry {leaked}: "
            + "\n".join(
                line for line in text.splitlines() if any(forbidden[n] in line for n in leaked)
            )[:3000]
        )
    # Nor is the tenant id anywhere else in a span (the tenant transaction's opening statement
    # holds it as a literal: it makes no span; the key manager's URLs name it: dropped).
    assert str(tenant_id) not in spans_text


async def test_tenant_id_goes_on_spans_only_when_asked(
    settings: Settings, migrated_db: MigratedDatabase, make_caller: MakeCaller
) -> None:
    captured = CapturedSpans()
    exporter = captured.exporter
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, settings)
    database = Database(targets=targets, engine=engine, sessions=make_sessionmaker(engine))
    app = create_app(
        settings.model_copy(update={"OTEL_SPAN_TENANT_ID": True}),
        database,
        span_processor=captured,
    )
    caller = await make_caller()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get(f"{API}/me", headers=caller.headers)).status_code == 200
    finally:
        captured.close()
        await engine.dispose()
    tagged = [
        span.attributes[TENANT_ID_ATTRIBUTE]
        for span in exporter.get_finished_spans()
        if span.attributes and TENANT_ID_ATTRIBUTE in span.attributes
    ]
    assert tagged == [str(caller.tenant.id)]


def test_tracing_is_off_without_an_endpoint(settings: Settings, database: Database) -> None:
    assert settings.OTEL_EXPORTER_OTLP_ENDPOINT is None
    app = create_app(settings, database)
    assert not isinstance(app.build_middleware_stack(), RequestTracing)
    assert not getattr(database.engine.sync_engine, "_tenantdocs_traced", False)


# A caller's trace context (W3C traceparent): the last field says whether it sampled the trace.
CALLER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"


async def test_a_request_outside_a_sampled_trace_records_no_span_but_logs_its_trace(
    traced_client: tuple[httpx.AsyncClient, InMemorySpanExporter, io.StringIO, Settings],
    make_caller: MakeCaller,
) -> None:
    client, exporter, logs, _ = traced_client
    caller = await make_caller()
    unsampled = {"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-00"}
    answered = await client.get(f"{API}/documents", headers={**caller.headers, **unsampled})
    assert answered.status_code == 200, answered.text
    # Neither the request's span nor any of its statements' spans was recorded.
    assert exporter.get_finished_spans() == ()
    request_lines = [
        json.loads(line)
        for line in logs.getvalue().splitlines()
        if json.loads(line)["message"] == "request"
    ]
    assert [line["trace_id"] for line in request_lines] == [CALLER_TRACE_ID]


async def test_a_sampled_request_has_one_server_span_parenting_its_statements(
    traced_client: tuple[httpx.AsyncClient, InMemorySpanExporter, io.StringIO, Settings],
    make_caller: MakeCaller,
) -> None:
    client, exporter, _, _ = traced_client
    caller = await make_caller()
    sampled = {"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"}
    missing = f"{API}/documents/{uuid.uuid4()}"
    assert (await client.get(missing, headers={**caller.headers, **sampled})).status_code == 404
    spans = exporter.get_finished_spans()
    servers = [span for span in spans if span.kind is SpanKind.SERVER]
    assert len(servers) == 1, [span.name for span in servers]
    server = servers[0]
    assert server.name == f"GET {API}/documents/{{document_id}}"
    assert format(server.context.trace_id, "032x") == CALLER_TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == CALLER_SPAN_ID
    assert dict(server.attributes or {}) == {
        "http.request.method": "GET",
        "http.route": f"{API}/documents/{{document_id}}",
        "http.response.status_code": 404,
        "url.scheme": "http",
        "network.protocol.version": "1.1",
    }
    # Every other span (the statements, the token check's key fetch) is a child of it.
    assert all(
        span.parent is not None and span.parent.span_id == server.context.span_id
        for span in spans
        if span is not server
    )
    statements = [
        str(span.attributes["db.statement"])
        for span in spans
        if span.attributes and "db.statement" in span.attributes
    ]
    assert any("FROM documents" in statement for statement in statements), statements
    # The transaction's opening message (tenant context and BEGIN) makes no span.
    assert not any("set_config" in statement for statement in statements), statements


async def test_a_non_standard_method_is_one_label_in_the_span_and_the_metrics(
    traced_client: tuple[httpx.AsyncClient, InMemorySpanExporter, io.StringIO, Settings],
    make_caller: MakeCaller,
) -> None:
    """PROPFIND is none of the standard methods: the span and the request metrics both say
    OpenTelemetry's `_OTHER`, never two spellings of it."""
    client, exporter, _, _ = traced_client
    caller = await make_caller()
    sampled = {"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"}
    route = f"{API}/me"
    labels = {"method": "_OTHER", "route": route, "status": "405"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0.0
    answered = await client.request("PROPFIND", route, headers={**caller.headers, **sampled})
    assert answered.status_code == 405, answered.text
    servers = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert [span.name for span in servers] == [f"_OTHER {route}"]
    attributes = dict(servers[0].attributes or {})
    assert attributes["http.request.method"] == "_OTHER"
    assert attributes["http.route"] == route
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1
