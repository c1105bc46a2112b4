"""Pathological 1 MiB request bodies for the edge nesting scan (its tests and `make bench-edge`)."""

from __future__ import annotations

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
