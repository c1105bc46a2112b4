"""Run the Python examples of the docs that are fenced as ```python test.

Each example runs on its own, with top-level `await` allowed, in a namespace holding a few
fixtures (see `namespace` in test_doc_examples.py); everything else it imports itself, so a
reader can copy it as it stands. Tracebacks point at the example's lines in the Markdown file.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "python test"
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class DocExample:
    """One runnable code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the block's first code line
    source: str

    @property
    def name(self) -> str:
        """`FILE.md:LINE`, the test id."""
        return f"{self.path.name}:{self.line}"


def collect(path: Path) -> list[DocExample]:
    """The blocks of `path` fenced as ```python test, in order."""
    text = path.read_text()
    examples = []
    for match in _FENCE.finditer(text):
        if match.group(1).strip() != MARKER:
            continue
        line = text.count("\n", 0, match.start(2)) + 1
        examples.append(DocExample(path, line, match.group(2)))
    return examples


async def run(example: DocExample, namespace: dict[str, Any]) -> None:
    """Execute `example` in `namespace`, awaiting it when it uses top-level await."""
    padded = "\n" * (example.line - 1) + example.source
    code = compile(
        padded, str(example.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    result = eval(code, namespace)  # noqa: S307  (our own docs, the point of the test)
    if inspect.iscoroutine(result):
        await result
