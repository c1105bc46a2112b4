"""Benchmarks: one command each (`make bench-*`), printing a table.

Rules every benchmark keeps:

- It runs end to end at tiny sizes: `tests/test_bench/test_bench_smoke.py` runs each one that
  way in `make test` (no timing is asserted there; speed is read from the full runs).
- It never changes the configuration of a server another benchmark (or the test suite) shares:
  no `ALTER SYSTEM`, no role passwords. A benchmark that needs other settings starts a server
  of its own (bench-vector: bench/.cache/postgres-vector, not bench-rls's bench/.cache/postgres).
"""
