"""The JSON nesting scan runs before authentication: its work must be linear in the body.

Asserted on the work the scanner reports (strings cut out plus loop iterations), never on time;
`make bench-edge` shows the time. The bodies are the shapes that make a JSON scanner rescan or
backtrack: escaped quotes (the quadratic case of issue 13), open strings, many quotes, deep and
dense brackets.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.middleware.edge_limits import scan_nesting

MIB = 1 << 20
MAX_DEPTH = 32


def _fill(unit: bytes, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """`prefix` + `unit` repeated + `suffix`, 1 MiB in all (give or take a unit)."""
    return prefix + unit * ((MIB - len(prefix) - len(suffix)) // len(unit)) + suffix


PATHOLOGICAL_BODIES = {
    "escaped quotes in a string": _fill(b'\\"', b'{"k": "', b'"}'),
    "escaped quotes, bare": _fill(b'\\"'),
    "escaped quotes after one quote": _fill(b'\\"', b'"'),
    "unterminated string": _fill(b"a", b'{"k": "'),
    "unterminated string ending in a backslash": _fill(b"a", b'{"k": "', b"\\"),
    "quotes only": _fill(b'"'),
    "backslashes only": _fill(b"\\"),
    "long string": _fill(b"x", b'{"k": "', b'"}'),
    "deep arrays": _fill(b"["),
    "deep objects": _fill(b'{"k":'),
    "deep just under the limit, then dense": _fill(b"[],", b"[" * (MAX_DEPTH - 1)),
    "dense shallow brackets": _fill(b"[],", b"[", b"[]]"),
    "dense brackets and strings": _fill(b'[""],', b"[", b'[""]]'),
    "dense strings": _fill(b'"",', b"[", b'""]'),
    "closers only": _fill(b"]"),
    "numbers": _fill(b"0.5,", b"[", b"1]"),
    "many small objects": _fill(b'{"a": [1, "x"], "b": "yy"},', b"[", b"1]"),
}


@pytest.mark.parametrize("name", PATHOLOGICAL_BODIES)
def test_scan_work_is_linear_in_the_body_for_pathological_bodies(name: str) -> None:
    body = PATHOLOGICAL_BODIES[name]
    assert len(body) > MIB - 16
    scan = scan_nesting(body, MAX_DEPTH)
    assert scan.steps <= len(body) + 1, (name, scan.steps)


@pytest.mark.parametrize(
    "name",
    [
        "escaped quotes in a string",
        "escaped quotes, bare",
        "escaped quotes after one quote",
        "unterminated string",
        "unterminated string ending in a backslash",
        "backslashes only",
        "long string",
        "deep arrays",
    ],
)
def test_strings_are_skipped_whole_and_deep_nesting_stops_at_the_limit(name: str) -> None:
    """The shapes of issue 13 cost a handful of steps, not one per byte or escaped quote."""
    scan = scan_nesting(PATHOLOGICAL_BODIES[name], MAX_DEPTH)
    assert scan.steps <= 2 * MAX_DEPTH + 8, (name, scan.steps)


def test_verdicts_on_the_pathological_bodies() -> None:
    deep = f"nested more than {MAX_DEPTH} levels"
    verdicts = {
        name: scan_nesting(body, MAX_DEPTH).problem for name, body in PATHOLOGICAL_BODIES.items()
    }
    assert deep in (verdicts["deep arrays"] or "")
    assert deep in (verdicts["deep objects"] or "")
    # Too few openers to nest too deep: the parser refuses it (422), without recursing.
    assert verdicts["closers only"] is None
    mismatched = scan_nesting(b"]" * 40 + b"[" * 40, MAX_DEPTH).problem
    assert "brackets don't match" in (mismatched or "")
    for name in ("escaped quotes in a string", "long string", "dense shallow brackets"):
        assert verdicts[name] is None, name
    # At the limit exactly: every run is walked byte by byte, and none goes past it.
    assert verdicts["deep just under the limit, then dense"] is None
    for name in ("dense brackets and strings", "dense strings", "numbers", "many small objects"):
        assert verdicts[name] is None, name


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    return 0


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=60,
)
# Bytes built mostly from the characters the scanner cares about, so fuzzing reaches its states.
_STRUCTURAL_BYTES = st.lists(
    st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":", b"a", b" ", b'\\"']),
    max_size=400,
).map(b"".join)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(body=st.binary(max_size=2000) | _STRUCTURAL_BYTES, max_depth=st.integers(0, 40))
def test_fuzz_any_bytes_within_the_work_bound(body: bytes, max_depth: int) -> None:
    scan = scan_nesting(body, max_depth)
    assert scan.steps <= len(body) + 1


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(value=_JSON_VALUES, max_depth=st.integers(0, 8), ascii_only=st.booleans())
def test_fuzz_agrees_with_the_parser_on_valid_json(
    value: Any, max_depth: int, ascii_only: bool
) -> None:
    """On valid JSON the scan refuses exactly the documents nested deeper than the limit."""
    body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    depth = _depth(json.loads(body))
    scan = scan_nesting(body, max_depth)
    assert (scan.problem is None) == (depth <= max_depth), (body[:200], depth, scan)
    assert scan.steps <= len(body) + 1
