"""Helpers shared by the tests and the benchmarks: factories, a throw-away database, an IdP.

Both `tests/` and `bench/` import from here; neither imports the other.
"""
