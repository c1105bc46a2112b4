"""Input checked with a regex is matched whole: `fullmatch`, never `match`/`search` with `$`.

`$` also matches just before a final newline, so `re.match(r"^…$", "good\\n")` passes a value
the code after it then chokes on (a tenant claim ending in "\\n" used to give a 500). This test
reads app/ with `ast` and fails on any `re.match`/`re.search` call, any `.match`/`.search` on
a compiled pattern, and any compiled pattern that still ends in `$`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
PARTIAL_MATCHERS = {"match", "search"}


def _compiled_patterns(tree: ast.AST) -> dict[str, str]:
    """Module-level names bound to re.compile(<literal>), with their pattern text."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) == "re.compile"
            and node.value.args
            and isinstance(node.value.args[0], ast.Constant)
        ):
            pattern = node.value.args[0].value
            text = pattern.decode("latin-1") if isinstance(pattern, bytes) else str(pattern)
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = text
    return found


def regex_problems(source: str, where: str = "<snippet>") -> list[str]:
    """Every partial-match use of a regex in `source`."""
    tree = ast.parse(source)
    compiled = _compiled_patterns(tree)
    problems = [
        f"{where}: {name} ends in `$` (use fullmatch without anchors)"
        for name, text in compiled.items()
        if text.endswith("$")
    ]
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = ast.unparse(node.func.value)
        if node.func.attr in PARTIAL_MATCHERS and (receiver == "re" or receiver in compiled):
            problems.append(f"{where}:{node.lineno}: {ast.unparse(node.func)}() (use fullmatch)")
    return problems


def test_app_matches_regexes_whole() -> None:
    problems = []
    for path in sorted(APP.rglob("*.py")):
        problems += regex_problems(path.read_text(), str(path.relative_to(APP.parent)))
    assert problems == []


@pytest.mark.parametrize(
    "snippet",
    [
        'import re\nUUID = re.compile(r"^[0-9a-f]+$")\nUUID.fullmatch(x)',
        'import re\nUUID = re.compile(r"[0-9a-f]+")\nUUID.match(x)',
        'import re\nre.match(r"[0-9a-f]+", x)',
        'import re\nre.search(r"[0-9a-f]+\\Z", x)',
    ],
)
def test_the_scanner_catches_partial_matches(snippet: str) -> None:
    assert regex_problems(snippet)


def test_the_scanner_accepts_fullmatch() -> None:
    assert regex_problems('import re\nUUID = re.compile(r"[0-9a-f]+")\nUUID.fullmatch(x)') == []
