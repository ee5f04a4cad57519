"""The whole monitoring stack, for real, on 127.0.0.1: simulator, exporter, Prometheus with the
alert rules, Alertmanager with the example config's routes and inhibitions, a webhook receiver.

The simulator's clock runs four times faster than real time and starts 40 s into the demo, so
jobs fail, stall and succeed within a minute. Prometheus scrapes and evaluates every second; the
test shortens every `for:` to 1 s and the stall threshold to 15 s (longer than any healthy demo
job's pause between progress steps at this speed, about 11 s).
"""

from __future__ import annotations

import re
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml
from conftest import (
    REPO,
    Harness,
    Processes,
    demo_raw_config,
    free_port,
    start_alertmanager,
    wait_ready,
    wait_until,
)
from promql import RECORDING_RULES, dashboard_queries

from exporter.model import STALL_AFTER

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from conftest import Webhook

    from exporter.simulator import Simulator

pytestmark = pytest.mark.e2e
SPEED, OFFSET = 4.0, 40.0
STALL_SECONDS = 15


def fast_rules(tmp_path: Path) -> Path:
    """The shipped rules with every `for:` at 1 s and the stall threshold at STALL_SECONDS."""
    text = (REPO / "alerting" / "rules" / "asyncjob-alerts.yaml").read_text()
    text = re.sub(r"^(\s+)for: \S+$", r"\1for: 1s", text, flags=re.MULTILINE)
    stall = 'time() - asyncjob_last_progress_change_timestamp_seconds{job="asyncjob"} > '
    shipped = f"{stall}{round(STALL_AFTER.total_seconds())}\n"
    assert text.count(shipped) == 1
    text = text.replace(shipped, f"{stall}{STALL_SECONDS}\n")
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def query(url: str, promql: str) -> list[dict[str, Any]]:
    response = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    assert response.status_code == 200, (promql, response.text)
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def test_alerts_and_dashboards_end_to_end(
    make_harness: Callable[..., Harness], processes: Processes, webhook: Webhook, tmp_path: Path
) -> None:
    started = time.monotonic()

    def config(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim, poll_interval="500ms")
        raw["sources"][3]["job_ids"].append("gone-batch")  # a 404: a failing poll to show
        return raw

    h = make_harness(
        config, start_polling=True, sim_clock=lambda: OFFSET + (time.monotonic() - started) * SPEED
    )
    am = start_alertmanager(processes, tmp_path, webhook.url)
    prom_port = free_port()
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(fast_rules(tmp_path)), str(RECORDING_RULES)],
                "alerting": {
                    "alertmanagers": [
                        {"static_configs": [{"targets": [am.removeprefix("http://")]}]}
                    ]
                },
                "scrape_configs": [
                    {
                        "job_name": "asyncjob",
                        "static_configs": [{"targets": [f"127.0.0.1:{h.server.port}"]}],
                    }
                ],
            }
        )
    )
    processes.start(
        "prometheus",
        f"--config.file={prom_config}",
        f"--storage.tsdb.path={tmp_path / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    )
    prom = f"http://127.0.0.1:{prom_port}"
    wait_ready(f"{prom}/-/ready", "Prometheus")

    # A failed job is notified (from its finish time), with the labels that route and group it.
    (failed, *_) = wait_until(
        lambda: webhook.firing("AsyncJobFailed", job_id="train-fail"), 40, "AsyncJobFailed"
    )
    assert failed["labels"] == {
        "alertname": "AsyncJobFailed",
        "severity": "warning",
        "job": "asyncjob",
        "instance": f"127.0.0.1:{h.server.port}",
        "provider": "azure_language_training",
        "source": "language-training",
        "job_id": "train-fail",
    }
    assert failed["annotations"]["runbook_url"].endswith("/alerting/runbook.md#asyncjobfailed")

    # Every dashboard query and variable returns data while the jobs move.
    for q in dashboard_queries():
        result = wait_until(partial(query, prom, q.expr), 40, f"data for {q.where}: {q.expr}")
        if q.label:
            assert any(q.label in r["metric"] for r in result), q.where

    # The fine-tune that stops moving is reported stalled.
    (stalled, *_) = wait_until(
        lambda: webhook.firing("AsyncJobStalled", job_id="sd-stalled"), 60, "AsyncJobStalled"
    )
    assert stalled["labels"]["severity"] == "warning"
    assert stalled["labels"]["source"] == "stable-diffusion"
    assert "its state and progress have not changed for" in stalled["annotations"]["description"]

    # ta-ok ran and succeeded without raising anything.
    wait_until(
        lambda: query(prom, 'asyncjob_state{job_id="ta-ok", state="succeeded"} == 1'),
        40,
        "ta-ok to succeed",
    )
    assert [
        a["labels"]["alertname"] for a in webhook.alerts if a["labels"].get("job_id") == "ta-ok"
    ] == []

    # With the exporter gone, AsyncJobExporterDown fires and the job alerts are inhibited.
    h.exporter.stop()
    h.server.stop()
    wait_until(
        lambda: webhook.firing("AsyncJobExporterDown", job="asyncjob"), 40, "AsyncJobExporterDown"
    )

    def failed_is_inhibited() -> bool:
        alerts = requests.get(
            f"{am}/api/v2/alerts", params={"filter": 'alertname="AsyncJobFailed"'}, timeout=5
        ).json()
        return any(
            a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"] for a in alerts
        )

    wait_until(failed_is_inhibited, 30, "AsyncJobFailed to be inhibited by AsyncJobExporterDown")
