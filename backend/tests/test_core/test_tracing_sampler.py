"""OTEL_TRACES_SAMPLER_ARG decides the share of new traces recorded (docs/OBSERVABILITY.md).

The tracer provider is one per process, so each ratio is tried in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import SettingsError, load_settings

BACKEND = Path(__file__).resolve().parents[2]

# Counts the root spans recorded out of 400, and whether a child of a caller's sampled
# traceparent is recorded, under the given ratio.
PROBE = """
import json, sys
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from app.core.config import load_settings
from app.core.tracing import PhiSafeSpanExporter, configure_tracing

settings = load_settings(OTEL_TRACES_SAMPLER_ARG=float(sys.argv[1]))
exporter = InMemorySpanExporter()
provider = configure_tracing(settings, SimpleSpanProcessor(PhiSafeSpanExporter(exporter)))
tracer = provider.get_tracer("probe")
for _ in range(400):
    with tracer.start_as_current_span("root"):
        pass
roots = len(exporter.get_finished_spans())
caller = extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
with tracer.start_as_current_span("child of a sampled caller", context=caller):
    pass
followed = len(exporter.get_finished_spans()) == roots + 1
print(json.dumps({"roots": roots, "followed": followed}))
"""


def _probe(ratio: float) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(ratio)],
        cwd=BACKEND,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("ratio", "fewest", "most"),
    [(1.0, 400, 400), (0.25, 50, 150), (0.0, 0, 0)],
)
def test_sampler_ratio_decides_which_traces_are_recorded(
    ratio: float, fewest: int, most: int
) -> None:
    result = _probe(ratio)
    roots = result["roots"]
    assert isinstance(roots, int)
    assert fewest <= roots <= most, f"ratio {ratio}: {roots} of 400 new traces recorded"
    # A caller that sampled its trace gets it recorded here too, whatever the ratio.
    assert result["followed"] is True


def test_the_ratio_is_a_share() -> None:
    with pytest.raises(SettingsError, match="OTEL_TRACES_SAMPLER_ARG"):
        load_settings(OTEL_TRACES_SAMPLER_ARG=1.5)
