"""The independent RLS linter and prover `pgrls` agree the schema is sound.

`pgrls verify` reports UNVERIFIED, not PROVEN, for our policies: the spec's
`NULLIF(current_setting(...), '')::uuid` (which turns an empty setting into "no rows" instead of
a cast error) is outside the prover's decidable fragment. LEAK is what must never appear.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testkit import database_harness as harness
from tests.conftest import MigratedDatabase

CONFIG = Path(__file__).resolve().parents[2] / "pgrls.toml"
TENANT_TABLES = {
    "public.tenants",
    "public.users",
    "public.documents",
    "public.audit_logs",
    "public.idempotency_keys",
    "public.document_chunks",
    # No runtime privilege at all; its one policy is bound to the owner (test_policy_coverage).
    "public.audit_chain_heads",
}


def _pgrls(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("pgrls", path=str(Path(sys.executable).parent)) or "pgrls"
    return subprocess.run(
        [executable, *args, "--config", str(CONFIG), "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_lint_finds_no_error_and_no_warning(migrated_db: MigratedDatabase) -> None:
    url = harness.libpq(migrated_db.superuser_url)
    result = _pgrls("lint", "--fail-on", "warning", "--format", "json", database_url=url)
    report: dict[str, Any] = json.loads(result.stdout)
    serious = [
        (v["rule_id"], v["message"][:160])
        for v in report["violations"]
        if v["severity"] in ("error", "warning")
    ]
    assert serious == []
    assert report["summary"]["errors"] == report["summary"]["warnings"] == 0
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("mode", ["cross-tenant", "write"])
def test_verify_reports_no_leak_on_any_table(migrated_db: MigratedDatabase, mode: str) -> None:
    url = harness.libpq(migrated_db.superuser_url)
    result = _pgrls("verify", "--mode", mode, "--format", "json", database_url=url)
    report: dict[str, Any] = json.loads(result.stdout)
    verdicts = {table["table"]: table["verdict"] for table in report["tables"]}
    assert set(verdicts) == TENANT_TABLES  # every tenant table was examined
    assert report["summary"]["leak"] == 0
    assert set(verdicts.values()) <= {"isolated", "proven", "unverified"}, verdicts
    assert result.returncode == 0, result.stderr


def test_every_allowlist_entry_gives_its_reason() -> None:
    entries = re.findall(r'^\s*"([^"]+)",(.*)$', CONFIG.read_text(), flags=re.MULTILINE)
    assert entries  # the file does allowlist something; each entry must say why
    unexplained = [name for name, rest in entries if len(rest.strip().lstrip("#").strip()) < 20]
    assert unexplained == []
