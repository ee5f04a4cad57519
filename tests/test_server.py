"""The /metrics render sharing: never older than the scrape, shared by scrapes that queued."""

from __future__ import annotations

import gzip
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.server import SharedRender

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric


class Counting(Collector):
    def __init__(self) -> None:
        self.renders = 0

    def collect(self) -> Iterator[Metric]:
        self.renders += 1
        yield GaugeMetricFamily(
            "renders", "How many times the registry was collected.", value=self.renders
        )


def test_a_scrape_is_answered_by_a_render_started_after_it_arrived() -> None:
    registry = CollectorRegistry()
    counting = Counting()
    registry.register(counting)
    shared = SharedRender(registry)
    queued_earlier = time.monotonic()
    _, first = shared.get("", gzipped=False)
    assert b"renders 1.0" in first
    # A scrape that arrived before that render started (it queued behind it) shares it...
    assert shared.get("", gzipped=False, arrived=queued_earlier) == (
        "text/plain; version=0.0.4; charset=utf-8",
        first,
    )
    assert counting.renders == 1
    # ...one that arrives now gets a fresh render.
    _, second = shared.get("", gzipped=False)
    assert b"renders 2.0" in second
    # Compressed and OpenMetrics variants of the same render.
    content_type, zipped = shared.get("", gzipped=True, arrived=queued_earlier)
    assert gzip.decompress(zipped) == second
    assert counting.renders == 2
    content_type, body = shared.get("application/openmetrics-text; version=1.0.0", gzipped=False)
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
