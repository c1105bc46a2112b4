"""The ingestion pipeline end to end on the real servers: PostgreSQL (procrastinate's queue,
RLS), SeaweedFS, OpenBao, and the local MiniLM model."""

from __future__ import annotations

import io
import uuid

import psycopg
import pytest
from pypdf import PdfWriter
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import undefer

from app.content.backends import ContentBackends
from app.content.chunk_text import ChunkCipher
from app.content.key_manager import EncryptionContext
from app.core.config import Settings
from app.database.session import admin_transaction, tenant_transaction
from app.models import Document, DocumentChunk
from app.services import ingest
from testkit import database_harness as harness
from testkit.factories import make_document, provision_tenant
from testkit.ingest_helpers import drain_queue, ingest_context, store_content
from tests.conftest import MigratedDatabase

NOTE = (
    "Patient is a 58-year-old man with crushing chest pain radiating to the left arm, "
    "diaphoresis and nausea since this morning. ECG shows ST elevation in leads II, III, aVF. "
) * 30


@pytest.fixture
def backends(settings: Settings, object_store: object, key_manager: object) -> ContentBackends:
    return ContentBackends(settings, store=object_store, keys=key_manager, owned=False)  # type: ignore[arg-type]


async def _document(
    sessions: async_sessionmaker[AsyncSession],
    tenant: uuid.UUID,
    document_id: uuid.UUID | None = None,
) -> Document:
    statement = select(Document).where(Document.tenant_id == tenant)
    if document_id is not None:
        statement = statement.where(Document.id == document_id)
    async with tenant_transaction(sessions, tenant) as session:
        return (await session.execute(statement)).scalar_one()


async def _chunks(
    sessions: async_sessionmaker[AsyncSession], tenant: uuid.UUID
) -> list[DocumentChunk]:
    async with tenant_transaction(sessions, tenant) as session:
        rows = await session.execute(
            select(DocumentChunk)
            .where(DocumentChunk.tenant_id == tenant)
            .order_by(DocumentChunk.ordinal)
            .options(undefer(DocumentChunk.text_ciphertext))
        )
        return list(rows.scalars())


async def test_stored_content_becomes_encrypted_searchable_chunks_and_reruns_are_idempotent(
    settings: Settings,
    migrated_db: MigratedDatabase,
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    backends: ContentBackends,
) -> None:
    tenant = await provision_tenant(admin_sessions, documents=1)
    document_id = tenant.document_ids[0]
    await store_content(
        runtime_sessions, backends, tenant.tenant_id, document_id, NOTE.encode(), "text/plain"
    )
    context = ingest_context(runtime_sessions, backends, settings)
    await drain_queue(settings, migrated_db.owner_url, context)

    document = await _document(runtime_sessions, tenant.tenant_id)
    chunks = await _chunks(runtime_sessions, tenant.tenant_id)
    assert (document.status, document.status_reason) == ("completed", None)
    assert document.chunk_count == len(chunks) > 1
    assert {c.embedding_provider for c in chunks} == {"local"}
    assert {c.embedding_dimensions for c in chunks} == {384}
    # The text is sealed: nothing of it is in the row, and it opens with the content's key.
    raw = b"".join(c.text_ciphertext for c in chunks)
    assert b"chest pain" not in raw
    assert b"Patient" not in raw
    keys = await backends.key_manager()
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        stored = await session.get(Document, document_id)
        assert stored is not None
        assert stored.content_wrapped_key is not None
        data_key = await keys.unwrap(
            stored.content_key_ref or "",
            stored.content_wrapped_key,
            EncryptionContext(tenant.tenant_id, document_id),
        )
    cipher = ChunkCipher(data_key, EncryptionContext(tenant.tenant_id, document_id))
    assert "crushing chest pain" in cipher.open(0, chunks[0].text_ciphertext)

    # A re-run replaces the chunks with the same ones.
    assert await ingest.ingest_document(context, tenant.tenant_id, document_id) == "completed"
    again = await _chunks(runtime_sessions, tenant.tenant_id)
    assert [(c.ordinal, c.start_char, c.end_char) for c in again] == [
        (c.ordinal, c.start_char, c.end_char) for c in chunks
    ]
    assert {c.id for c in again}.isdisjoint({c.id for c in chunks})


def _pdf(text_lines: list[str]) -> bytes:
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    body = (
        "BT /F1 12 Tf 72 720 Td " + " ".join(f"({line}) Tj 0 -16 Td" for line in text_lines) + " ET"
    )
    stream = DecodedStreamObject()
    stream.set_data(body.encode())
    page[NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


async def test_bad_inputs_end_failed_or_empty_with_a_reason_never_a_crash_loop(
    settings: Settings,
    migrated_db: MigratedDatabase,
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    backends: ContentBackends,
) -> None:
    cases = {
        "pdf": (
            _pdf(["Discharge summary: community acquired pneumonia,", "treated with ceftriaxone."]),
            "application/pdf",
        ),
        "corrupt": (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage" * 3, "application/pdf"),
        "unsupported": (b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png"),
        "empty": (b"   \n\n  ", "text/plain"),
        "markdown": (b"# Plan\n\n* **Start** metformin 500 mg\n", "text/markdown"),
    }
    tenants = {}
    for name, (data, content_type) in cases.items():
        tenant = await provision_tenant(admin_sessions, documents=1)
        tenants[name] = tenant
        await store_content(
            runtime_sessions, backends, tenant.tenant_id, tenant.document_ids[0], data, content_type
        )
    await drain_queue(
        settings, migrated_db.owner_url, ingest_context(runtime_sessions, backends, settings)
    )

    outcome = {}
    for name, tenant in tenants.items():
        document = await _document(runtime_sessions, tenant.tenant_id)
        outcome[name] = (document.status, document.chunk_count, document.status_reason)
    assert outcome["pdf"][:2] == ("completed", 1)
    assert outcome["corrupt"][0] == "failed"
    assert "PDF could not be read" in (outcome["corrupt"][2] or "")
    assert outcome["unsupported"][0] == "failed"
    assert "image/png" in (outcome["unsupported"][2] or "")
    assert outcome["empty"] == ("completed", 0, "no text found: nothing to search")
    assert outcome["markdown"][:2] == ("completed", 1)
    # Every job ended (none left to retry): a permanent failure does not loop.
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as conn:
        statuses = conn.execute(
            "SELECT status::text, count(*) FROM procrastinate_jobs"
            " WHERE args ->> 'tenant_id' = ANY(%s) GROUP BY 1",
            ([str(t.tenant_id) for t in tenants.values()],),
        ).fetchall()
    assert statuses == [("succeeded", len(cases))]


async def test_a_worker_cannot_touch_another_tenants_rows(
    settings: Settings,
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    backends: ContentBackends,
) -> None:
    owner = await provision_tenant(admin_sessions, documents=1)
    other = await provision_tenant(admin_sessions, documents=1)
    await store_content(
        runtime_sessions,
        backends,
        owner.tenant_id,
        owner.document_ids[0],
        NOTE.encode(),
        "text/plain",
    )
    context = ingest_context(runtime_sessions, backends, settings)
    # A job naming the other tenant with this tenant's document finds nothing: RLS scopes the
    # worker's reads and writes to the job's tenant.
    assert (
        await ingest.ingest_document(context, other.tenant_id, owner.document_ids[0]) == "skipped"
    )
    assert await _chunks(runtime_sessions, other.tenant_id) == []
    assert await _chunks(runtime_sessions, owner.tenant_id) == []
    # And inside the worker's tenant transaction, the other tenant's rows are invisible.
    async with tenant_transaction(runtime_sessions, other.tenant_id) as session:
        role = await session.scalar(text("SELECT current_user"))
        seen = await session.scalar(select(Document.id).where(Document.id == owner.document_ids[0]))
        purged = await session.scalar(
            text("SELECT purge_document_chunks(:d)"), {"d": owner.document_ids[0]}
        )
    assert (role, seen, purged) == ("app_runtime", None, 0)


async def test_text_search_over_http_finds_the_document_by_a_paraphrase_with_its_snippet(
    settings: Settings,
    migrated_db: MigratedDatabase,
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    backends: ContentBackends,
    database: object,
    make_caller: object,
) -> None:
    import httpx

    from app.main import create_app

    caller = await make_caller(role="admin")  # type: ignore[operator]
    tenant_id = caller.tenant.id
    notes = {
        "cardiac": NOTE,
        "skin": "Itchy red rash on both forearms after gardening; contact dermatitis, "
        "hydrocortisone cream prescribed. " * 10,
        "bone": "Fell from a ladder, swollen right wrist, X-ray shows distal radius fracture, "
        "cast applied. " * 10,
    }
    ids = {}
    async with admin_transaction(admin_sessions) as session:
        for name in notes:
            ids[name] = (await make_document(session, caller.user, filename=f"{name}.txt")).id
    for name, body in notes.items():
        await store_content(
            runtime_sessions, backends, tenant_id, ids[name], body.encode(), "text/plain"
        )
    await drain_queue(
        settings, migrated_db.owner_url, ingest_context(runtime_sessions, backends, settings)
    )

    app = create_app(settings, database, content=backends)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        found = await http.post(
            "/api/v1/documents/search",
            json={"query": "heart attack symptoms with pain going down the arm", "k": 2},
            headers=caller.headers,
        )
        empty = await http.post(
            "/api/v1/documents/search", json={"query": "  "}, headers=caller.headers
        )
        long = await http.post(
            "/api/v1/documents/search", json={"query": "x" * 1001}, headers=caller.headers
        )
        both = await http.post(
            "/api/v1/documents/search",
            json={"query": "rash", "embedding": [0.0] * 1024},
            headers=caller.headers,
        )
    assert found.status_code == 200, found.text
    items = found.json()["items"]
    assert items[0]["document"]["id"] == str(ids["cardiac"])
    assert len(items) == 2
    assert "chest pain" in items[0]["snippet"]
    assert items[0]["distance"] < items[1]["distance"]
    assert (empty.status_code, long.status_code, both.status_code) == (422, 422, 422)


async def test_a_passing_failure_is_retried_with_backoff_then_fails_visibly_to_admins(
    settings: Settings,
    migrated_db: MigratedDatabase,
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    backends: ContentBackends,
    database: object,
    make_caller: object,
    owner_engine: object,
) -> None:
    import asyncio
    import socket

    import httpx

    from app.content.openbao_transit import OpenBaoTransitKeyManager
    from app.main import create_app
    from app.services import jobs

    caller = await make_caller(role="admin")  # type: ignore[operator]
    async with admin_transaction(admin_sessions) as session:
        document_id = (await make_document(session, caller.user)).id
    await store_content(
        runtime_sessions, backends, caller.tenant.id, document_id, NOTE.encode(), "text/plain"
    )
    # The KMS is down for the worker: a real client on a closed loopback port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    keys_down = OpenBaoTransitKeyManager(f"http://127.0.0.1:{closed_port}", "token", timeout=1)
    two_attempts = settings.model_copy(update={"INGEST_MAX_ATTEMPTS": 2})
    context = ingest_context(
        runtime_sessions,
        ContentBackends(two_attempts, store=backends.store, keys=keys_down, owned=False),
        two_attempts,
    )
    await drain_queue(two_attempts, migrated_db.owner_url, context)
    first = await _document(runtime_sessions, caller.tenant.id, document_id)
    assert first.status == "processing"  # waiting for its retry, 2 s later
    await asyncio.sleep(jobs.BACKOFF_BASE_SECONDS + 0.5)
    await drain_queue(two_attempts, migrated_db.owner_url, context)
    await keys_down.close()

    document = await _document(runtime_sessions, caller.tenant.id, document_id)
    assert (document.status, document.status_reason) == (
        "failed",
        "processing failed 2 times; last error: KeyManagerUnavailableError",
    )
    app = create_app(settings, database, content=backends)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        listed = await http.get(
            "/api/v1/ingest-jobs", params={"status": "failed"}, headers=caller.headers
        )
        shown = await http.get(f"/api/v1/documents/{document_id}", headers=caller.headers)
    assert listed.status_code == 200, listed.text
    assert [(j["document_id"], j["attempts"]) for j in listed.json()["items"]] == [
        (str(document_id), 2)
    ]
    assert shown.json()["status_reason"] == document.status_reason
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.database.session import make_sessionmaker

    assert isinstance(owner_engine, AsyncEngine)
    async with make_sessionmaker(owner_engine)() as session:
        every = await jobs.list_all_jobs(session, "failed", 1000)
    assert str(document_id) in {row[2] for row in every}
