"""What the edge's JSON nesting scan costs per 1 MiB body: pathological shapes vs a plain body.

The scan runs before authentication, so its cost per byte is what one anonymous request can
take from a worker. Each body is scanned `--repeat` times, round after round, alternating bodies
so noise hits all alike; the table shows the median time and its ratio to the plain body's. For
comparison, the scanner that issue 13 replaced (a string regex searched from every quote) runs
on a 16 KiB body of escaped quotes only, since it is quadratic.

    make bench-edge            # or: cd backend && python -m bench.edge_scan --repeat 7
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

from app.middleware.edge_limits import scan_nesting
from tests.test_middleware.test_nesting_scan import MAX_DEPTH, PATHOLOGICAL_BODIES

PLAIN = "long string"
# The scanner before issue 13, for the comparison row only.
_OLD_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _seconds(body: bytes) -> float:
    started = time.perf_counter()
    scan_nesting(body, MAX_DEPTH)
    return time.perf_counter() - started


def _old_seconds(body: bytes) -> float:
    started = time.perf_counter()
    _OLD_STRING.sub(b"", body)
    return time.perf_counter() - started


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds (median reported)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in PATHOLOGICAL_BODIES}
    small = PATHOLOGICAL_BODIES["escaped quotes, bare"][: 16 * 1024]
    old_small: list[float] = []
    new_small: list[float] = []
    for _ in range(args.repeat):
        for name, body in PATHOLOGICAL_BODIES.items():
            times[name].append(_seconds(body))
        new_small.append(_seconds(small))
        old_small.append(_old_seconds(small))
    plain = statistics.median(times[PLAIN])
    print(f"load average before: {_load()}")
    print(f"{'body (1 MiB unless noted)':<44} {'steps':>9} {'median ms':>10} {'x plain':>8}")
    for name, body in PATHOLOGICAL_BODIES.items():
        median = statistics.median(times[name])
        steps = scan_nesting(body, MAX_DEPTH).steps
        print(f"{name:<44} {steps:>9} {median * 1e3:>10.2f} {median / plain:>8.1f}")
    for label, samples in (
        ("16 KiB escaped quotes, this scanner", new_small),
        ("16 KiB escaped quotes, the old regex", old_small),
    ):
        median = statistics.median(samples)
        print(f"{label:<44} {'':>9} {median * 1e3:>10.2f} {median / plain:>8.1f}")
    print(f"load average after: {_load()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
