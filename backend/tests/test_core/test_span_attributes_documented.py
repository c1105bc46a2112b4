"""docs/OBSERVABILITY.md lists exactly the span attributes PhiSafeSpanExporter lets out (issue 21):
an attribute allowed in code but not explained in the doc, or documented but dropped, fails."""

from __future__ import annotations

import re
from pathlib import Path

from app.core import tracing

DOC = Path(__file__).resolve().parents[2] / "docs" / "OBSERVABILITY.md"
TABLE_HEADING = "### Every span attribute that can leave the process"


def _documented() -> tuple[set[str], set[str]]:
    """The span attributes and the event attributes named in the doc's table."""
    text = DOC.read_text()
    table = text[text.index(TABLE_HEADING) :].split("\n\n")[2]
    spans: set[str] = set()
    events: set[str] = set()
    for row in table.splitlines():
        if not row.startswith("| ") or row.startswith(("| Attribute", "| ---")):
            continue
        first_cell = row.split("|")[1].strip()
        names = set(re.findall(r"`([^`]+)`", first_cell))
        (events if first_cell.startswith("event ") else spans).update(names)
    return spans, events


def test_the_doc_lists_exactly_the_allowed_span_attributes() -> None:
    spans, events = _documented()
    assert spans == set(tracing.ALLOWED_SPAN_ATTRIBUTES)
    assert events == set(tracing._ALLOWED_EVENT_ATTRIBUTES)
