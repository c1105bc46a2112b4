"""Relative links (and #anchors) in the READMEs and backend/docs resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_deploy.artifacts import BACKEND_DIR, DOCS_DIR, REPO_ROOT

DOCUMENTS = sorted([REPO_ROOT / "README.md", BACKEND_DIR / "README.md", *DOCS_DIR.glob("*.md")])
REQUIRED_DOCS = {
    "DATABASE_SCHEMA.md",
    "RLS_PATTERNS.md",
    "MODEL_USAGE.md",
    "EXTENSION_POINTS.md",
    "RAILWAY_SETUP.md",
    "POSTGRESQL_TUNING.md",
}
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCED = re.compile(r"^```.*?^```", re.M | re.S)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Anchors of the headings of a Markdown file (outside code blocks)."""
    text = _FENCED.sub("", path.read_text())
    return {github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def relative_links(path: Path) -> list[str]:
    """Link targets in `path` that point inside the repository."""
    text = _FENCED.sub("", path.read_text())
    return [
        target
        for target in _LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_the_required_docs_exist_and_the_readmes_link_them() -> None:
    assert {path.name for path in DOCS_DIR.glob("*.md")} >= REQUIRED_DOCS
    for readme in (REPO_ROOT / "README.md", BACKEND_DIR / "README.md"):
        linked = {Path(target.split("#")[0]).name for target in relative_links(readme)}
        assert linked >= REQUIRED_DOCS, f"{readme} misses {REQUIRED_DOCS - linked}"
    assert "## Deploy to Railway" in (REPO_ROOT / "README.md").read_text()


def test_github_anchor_matches_githubs_rule() -> None:
    assert github_anchor("Testing a new table's policy") == "testing-a-new-tables-policy"
    assert github_anchor("`tenants`") == "tenants"
    assert github_anchor("Connection limits vs pool size") == "connection-limits-vs-pool-size"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(document: Path) -> None:
    broken = []
    for target in relative_links(document):
        file_part, _, anchor = target.partition("#")
        resolved = (document.parent / file_part).resolve() if file_part else document
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert broken == []
