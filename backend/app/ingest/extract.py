"""Text out of a document's bytes: PDF (pypdf), plain text and Markdown (and other text/*).

Supported content types: `application/pdf`; `text/plain`, `text/markdown`, `text/x-markdown`,
`text/csv` and any other `text/*` except HTML (read as UTF-8 text; Markdown keeps its words and
loses its markup characters). Anything else, an encrypted or unreadable PDF, or bytes that are
not text, raises ExtractionError with a reason the API shows on the document. Extraction stops
at `max_chars` (the rest is not indexed, and the result says so).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass

from pypdf import PdfReader
from pypdf.errors import PyPdfError

PDF_TYPES = frozenset({"application/pdf"})
MARKDOWN_TYPES = frozenset({"text/markdown", "text/x-markdown"})
_REFUSED_TEXT_TYPES = frozenset({"text/html"})
_MARKDOWN_MARKUP = re.compile(
    r"(^\s{0,3}#{1,6}\s+|^\s*[-*+]\s+|^\s*>\s?|[*_`~]{1,3}|!?\[|\]\([^)]*\))", re.M
)

# pypdf logs warnings for every oddity of a damaged file; the reason goes on the document.
logging.getLogger("pypdf").setLevel(logging.ERROR)


class ExtractionError(ValueError):
    """The document's text can't be read; `reason` is shown on the document (no content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ExtractedText:
    """The text, and whether it was cut at the limit."""

    text: str
    truncated: bool


def base_type(content_type: str) -> str:
    """`text/plain; charset=utf-8` -> `text/plain`."""
    return content_type.split(";", 1)[0].strip().lower()


def is_supported(content_type: str) -> bool:
    """Whether extract() reads this type at all."""
    kind = base_type(content_type)
    return kind in PDF_TYPES or (kind.startswith("text/") and kind not in _REFUSED_TEXT_TYPES)


def _cut(text: str, max_chars: int) -> ExtractedText:
    return ExtractedText(text[:max_chars], len(text) > max_chars)


def _pdf_text(data: bytes, max_chars: int) -> ExtractedText:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ExtractionError(
                "the PDF is encrypted (password-protected); its text can't be read"
            )
        parts: list[str] = []
        total = 0
        for page in reader.pages:
            page_text = page.extract_text() or ""
            parts.append(page_text)
            total += len(page_text) + 1
            if total > max_chars:
                break
    except ExtractionError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        # pypdf raises more than its own errors on damaged files; none of them is a crash.
        raise ExtractionError(f"the PDF could not be read ({type(exc).__name__})") from exc
    except RecursionError as exc:
        raise ExtractionError("the PDF could not be read (structure too deep)") from exc
    return _cut("\n".join(parts), max_chars)


def _plain_text(data: bytes, max_chars: int) -> str:
    head = data[: max_chars * 4]  # UTF-8 is at most 4 bytes a character
    if b"\x00" in head:
        raise ExtractionError("the content is not text (it contains NUL bytes)")
    try:
        return head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3 and len(head) < len(data):
            return head[: exc.start].decode("utf-8-sig")  # a character cut at the limit
        raise ExtractionError("the content is not valid UTF-8 text") from exc


def extract(data: bytes, content_type: str, max_chars: int) -> ExtractedText:
    """The text of `data` (at most `max_chars` characters); ExtractionError if unreadable."""
    kind = base_type(content_type)
    if kind in PDF_TYPES:
        return _pdf_text(data, max_chars)
    if not is_supported(kind):
        raise ExtractionError(
            f"content type {kind!r} is not supported for text search"
            " (supported: application/pdf and text/* other than HTML)"
        )
    text = _plain_text(data, max_chars)
    if kind in MARKDOWN_TYPES:
        text = _MARKDOWN_MARKUP.sub(" ", text)
    return _cut(text, max_chars)
