"""End to end with a real Prometheus server and promtool (Debian's, unpacked into .tools/).

Simulator, exporter and Prometheus all listen on 127.0.0.1; Prometheus scrapes every second.
The binaries are required: a missing one fails the test rather than skipping it.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING, Any

import pytest
import requests
from conftest import Harness, Processes, free_port, tool, wait_ready, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.e2e


@pytest.fixture
def prometheus(processes: Processes, tmp_path: Path) -> Callable[[int], str]:
    """Start Prometheus scraping 127.0.0.1:<port> every second; returns its base URL."""

    def start(target_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: asyncjob\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        port = free_port()
        processes.start(
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        )
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/-/ready", "Prometheus to be ready")
        return url

    return start


def query(url: str, promql: str) -> list[dict[str, Any]]:
    response = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def value_of(url: str, promql: str) -> float | None:
    result = query(url, promql)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_prometheus_scrapes_expected_values(
    make_harness: Callable[..., Harness], prometheus: Callable[[int], str]
) -> None:
    """State, progress and the translation counter arrive in Prometheus with their values."""
    h = make_harness(at=1000.0, start_polling=True)
    url = prometheus(h.server.port)
    wait_until(
        lambda: value_of(url, 'asyncjob_state{job_id="batch-ok",state="succeeded"}') == 1.0,
        timeout=30,
        what="asyncjob_state of batch-ok in Prometheus",
    )
    assert value_of(url, 'asyncjob_state{job_id="train-fail",state="failed"}') == 1.0
    assert value_of(url, 'asyncjob_state{job_id="sd-stalled",state="running"}') == 1.0
    assert value_of(url, 'asyncjob_progress_ratio{job_id="train-ok",phase="overall"}') == 1.0
    assert value_of(
        url, 'asyncjob_progress_ratio{job_id="sd-stalled",phase="overall"}'
    ) == pytest.approx(2 / 6)
    assert (
        value_of(url, 'asyncjob_translation_characters_charged_total{job_id="batch-ok"}') == 30000.0
    )
    assert (
        value_of(url, 'asyncjob_translation_characters_charged_total{job_id="batch-partial"}')
        == 12000.0
    )
    # Prometheus's own view of the target, with our labels next to its `job` label.
    (up,) = query(url, 'up{job="asyncjob"}')
    assert up["value"][1] == "1"
    (state,) = query(url, 'asyncjob_state{job_id="ta-ok",state="succeeded"}')
    assert state["metric"]["job"] == "asyncjob"
    assert state["metric"]["provider"] == "azure_text_analytics_analyze"
    jobs = len(h.exporter.store.jobs())
    assert value_of(url, 'count(asyncjob_state{job="asyncjob"} == 1)') == jobs


def test_promtool_check_metrics_is_silent(make_harness: Callable[..., Harness]) -> None:
    """`promtool check metrics` finds nothing to say about the real exposition."""
    h = make_harness(at=60.0)
    h.exporter.poll_once()
    exposition = requests.get(f"{h.url}/metrics", timeout=5).text
    assert "asyncjob_tasks" in exposition
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=exposition.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
