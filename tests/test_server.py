"""The /metrics render sharing: never older than the scrape, shared by scrapes that queued."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.server import HttpServer, SharedRender, make_app

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import Harness
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
    _, parts = shared.get("", gzipped=False)
    first = b"".join(parts)
    assert b"renders 1.0" in first
    # A scrape that arrived before that render started (it queued behind it) shares it...
    assert shared.get("", gzipped=False, arrived=queued_earlier) == (
        "text/plain; version=0.0.4; charset=utf-8",
        parts,
    )
    assert counting.renders == 1
    # ...one that arrives now gets a fresh render.
    _, again = shared.get("", gzipped=False)
    assert b"renders 2.0" in b"".join(again)
    # The compressed variant is rendered (and compressed) once for the scrapes that share it:
    # gzip members, one valid stream.
    arrived = time.monotonic()
    _, zipped = shared.get("", gzipped=True)
    assert b"renders 3.0" in gzip.decompress(b"".join(zipped))
    assert shared.get("", gzipped=True, arrived=arrived)[1] is zipped
    assert counting.renders == 3
    content_type, body = shared.get("application/openmetrics-text; version=1.0.0", gzipped=False)
    assert content_type.startswith("application/openmetrics-text")
    assert b"".join(body).endswith(b"# EOF\n")


@pytest.mark.parametrize(
    "query",
    ["name[]=asyncjob_up&name[]=asyncjob_build_info", "name%5B%5D=asyncjob_up&name%5B%5D=asyncjob_build_info"],
    ids=["raw", "percent-encoded"],
)  # fmt: skip
@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("openmetrics", [False, True])
def test_name_filter_in_every_form(
    make_harness: Callable[..., Harness], query: str, gzipped: bool, openmetrics: bool
) -> None:
    """?name[]= restricts the families, however the brackets are written, with gzip and in
    OpenMetrics too: one code path for every scrape."""
    h = make_harness()
    headers = {"Accept-Encoding": "gzip" if gzipped else "identity"}
    if openmetrics:
        headers["Accept"] = "application/openmetrics-text; version=1.0.0"
    response = requests.get(f"{h.url}/metrics?{query}", headers=headers, timeout=5)
    assert response.status_code == 200
    assert (response.headers.get("Content-Encoding") == "gzip") == gzipped
    text = response.text  # requests undoes the gzip
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert families == {"asyncjob_up", "asyncjob_build_info"}
    assert text.endswith("# EOF\n") == openmetrics


def test_slow_clients_cannot_take_more_than_the_connection_limit() -> None:
    """A bounded slowloris (60 clients trickling a byte every 0.3 s, for at most 6 s) against
    a limit of 20 connections: the server never runs more than 20 connection threads, each slow
    client is cut off at the header deadline, and every scrape is answered."""
    registry = CollectorRegistry()
    app = make_app(registry, "/metrics", lambda: None)
    server = HttpServer(app, "127.0.0.1:0", max_connections=20, header_timeout=1.0)
    server.start()
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.wait(0.02):
            mine = f"http-{server.port}_"
            serving = sum(t.name.startswith(mine) for t in threading.enumerate())
            peak = max(peak, serving)

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = []
    try:
        for _ in range(60):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            conn.sendall(b"GET /metrics HTTP/1.1\r\n")
            clients.append(conn)
        cut_off = 0
        deadline = time.monotonic() + 6
        scrapes: list[requests.Response] = []
        while time.monotonic() < deadline and cut_off < len(clients):
            cut_off = 0
            for conn in clients:
                try:
                    conn.sendall(b"X")
                except OSError:
                    cut_off += 1
            scrapes.append(requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=15))
            time.sleep(0.3)
        assert scrapes
        assert all(r.status_code == 200 for r in scrapes)
        assert peak <= 20
        assert peak >= 10  # the slow clients did take slots: the limit is what held them back
    finally:
        stop.set()
        watcher.join()
        for conn in clients:
            conn.close()
        server.stop()
