"""The README's quick start works as printed: `python -m app run`, then its curl commands.

The test starts the real server in dev mode (as `make run` does), takes the token from the curl
it prints, and runs the README's quick-start block in bash with only the token and the port
substituted, then checks what each printed command returned.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path
from typing import Any

from app.content.embedded_openbao import EmbeddedOpenBao
from app.core.config import BACKEND_DIR
from tests.conftest import MigratedDatabase
from tests.dev_server import dev_server

README = BACKEND_DIR.parent / "README.md"
MARKER = "<!-- quick-start:"
CONTENT_MARKER = "<!-- quick-start-content:"


def quick_start_block(marker: str = MARKER) -> str:
    """The bash block that follows the quick-start marker in the README."""
    text = README.read_text()
    after_marker = text[text.index(marker) :]
    match = re.search(r"```bash\n(.*?)```", after_marker, re.DOTALL)
    assert match is not None, "no bash block after the quick-start marker"
    return match.group(1)


def json_outputs(stdout: str) -> list[Any]:
    """The JSON documents the commands printed, one after another (curl adds no newline)."""
    decoder = json.JSONDecoder()
    documents, position = [], 0
    while position < len(stdout):
        if stdout[position].isspace():
            position += 1
            continue
        try:
            document, position = decoder.raw_decode(stdout, position)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{exc} in what the commands printed:\n{stdout}") from exc
        documents.append(document)
    return documents


def test_the_quick_start_block_sets_only_the_token_and_the_base_url() -> None:
    block = quick_start_block()
    assert "TOKEN='<the token from the curl above>'\n" in block
    assert "API=http://127.0.0.1:8000/api/v1\n" in block
    assert block.count("curl -s") == 4


async def test_readme_quick_start_commands_work_as_printed(
    migrated_db: MigratedDatabase, tmp_path: Path, embedded_openbao: EmbeddedOpenBao
) -> None:
    async with dev_server(migrated_db, tmp_path, embedded_openbao) as server:
        words = shlex.split(server.curl)
        header = words[words.index("-H") + 1]
        token = header.removeprefix("Authorization: Bearer ")
        script = (
            quick_start_block()
            .replace("'<the token from the curl above>'", shlex.quote(token))
            .replace("http://127.0.0.1:8000/", f"http://127.0.0.1:{server.port}/")
        )
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-euo",
            "pipefail",
            "-c",
            script,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(shell.communicate(), timeout=60)
        assert shell.returncode == 0, stderr.decode()

    registered, listed, searched, audited = json_outputs(stdout.decode())
    assert registered["status"] == "processing", registered
    assert registered["has_embedding"] is True
    assert registered["metadata"]["department"] == "cardiology"
    assert registered["id"] in [item["id"] for item in listed["items"]]
    assert searched["items"][0]["document"]["id"] == registered["id"]
    assert abs(searched["items"][0]["distance"]) < 1e-6
    creations = [item for item in audited["items"] if item["resource_id"] == registered["id"]]
    assert [item["action"] for item in creations] == ["document.create"]
    assert "embedding" in creations[0]["metadata"]["changed"]
    assert "P-1042" not in json.dumps(audited)


async def test_readme_content_quick_start_uploads_downloads_and_shows_the_audit_rows(
    migrated_db: MigratedDatabase, tmp_path: Path, embedded_openbao: EmbeddedOpenBao
) -> None:
    # No S3 settings: the server starts its embedded SeaweedFS on first use, as `make run` does.
    async with dev_server(migrated_db, tmp_path, embedded_openbao) as server:
        script = (
            quick_start_block(CONTENT_MARKER)
            .replace("'<the token from the curl above>'", shlex.quote(server.token))
            .replace("http://127.0.0.1:8000/", f"http://127.0.0.1:{server.port}/")
        )
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-euo",
            "pipefail",
            "-c",
            script,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(shell.communicate(), timeout=180)
        assert shell.returncode == 0, stderr.decode() + server.log_tail()
        server_log = server.log_tail()

    try:
        uploaded, searchable, found, same, audited = json_outputs(stdout.decode())
    except (AssertionError, ValueError) as exc:
        raise AssertionError(f"{exc}\nthe server's log:\n{server_log}") from exc
    # Stored and queued: the worker `python -m app run` starts beside the server indexes it.
    assert uploaded["status"] == "processing", f"{uploaded}\nthe server's log:\n{server_log}"
    assert len(uploaded["content_sha256"]) == 64
    assert searchable == {"status": "completed"}
    # The paraphrased question finds the PDF first, with a snippet of its own text.
    assert found["items"][0]["document"]["id"] == uploaded["id"], found
    assert "follow up in clinic" in found["items"][0]["snippet"], found
    assert same == {"same_bytes": True}
    assert [item["action"] for item in audited["items"]] == [
        "document.content_download",
        "document.ingest",
        "document.content_upload",
        "document.create",
    ]
    assert "P-1042" not in json.dumps(audited)
