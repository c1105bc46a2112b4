"""Splitting text into overlapping chunks of about `size` characters.

A chunk ends at a sentence end or, failing that, a word boundary in its last fifth, so words
and, where possible, sentences are not cut; the next chunk starts `overlap` characters before
it ends (at a word start), so a sentence that straddles a boundary is whole in one of them.
At most `max_chunks` are made (the rest of the text is not indexed, and the result says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WHITESPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?;:]\s")


@dataclass(frozen=True)
class Chunk:
    """One piece of the text: its position and its characters."""

    ordinal: int
    start: int
    end: int
    text: str


def normalise(text: str) -> str:
    """Runs of whitespace (newlines, page breaks, tabs) become one space."""
    return _WHITESPACE.sub(" ", text).strip()


def _end_of(text: str, start: int, size: int) -> int:
    end = min(start + size, len(text))
    if end == len(text):
        return end
    floor = start + size * 4 // 5
    sentence = None
    for match in _SENTENCE_END.finditer(text, floor, end + 1):
        sentence = match.start() + 1
    if sentence is not None:
        return sentence
    space = text.rfind(" ", floor, end + 1)
    return space if space > start else end


def _next_start(text: str, end: int, overlap: int, previous_start: int) -> int:
    start = max(end - overlap, previous_start + 1)
    if start > 0 and text[start - 1] != " ":
        space = text.find(" ", start, end)
        start = space + 1 if space != -1 else start
    while start < len(text) and text[start] == " ":
        start += 1
    return start


def split(text: str, size: int, overlap: int, max_chunks: int) -> tuple[list[Chunk], bool]:
    """The chunks of `text` (whitespace normalised), and whether `max_chunks` cut it short."""
    if overlap * 2 >= size:
        raise ValueError("overlap must be under half the chunk size")
    text = normalise(text)
    chunks: list[Chunk] = []
    start = 0
    while start < len(text):
        if len(chunks) == max_chunks:
            return chunks, True
        end = _end_of(text, start, size)
        chunks.append(Chunk(len(chunks), start, end, text[start:end].strip()))
        if end >= len(text):
            break
        start = _next_start(text, end, overlap, start)
    return chunks, False
