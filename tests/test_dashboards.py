"""The Grafana dashboards: generated JSON up to date, portable, and every query meaningful."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from conftest import REPO, Harness, run_tool
from promql import DASHBOARDS, dashboard_queries, names, rule_expressions

from exporter.simulator import Fault

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

PROVISIONING = REPO / "grafana" / "provisioning"
BOARD_PARAMS = pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)


def board(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_committed_json_matches_the_generator() -> None:
    result = subprocess.run(
        [sys.executable, "grafana/generate.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in DASHBOARDS} == {"asyncjob-overview.json", "asyncjob-job.json"}


@BOARD_PARAMS
def test_dashboard_is_portable(path: Path) -> None:
    """Fixed uid, pinned schema, read-only, no __inputs, the datasource variable everywhere."""
    data = board(path)
    assert "__inputs" not in data
    assert data["uid"] == path.stem
    assert data["schemaVersion"] == 39
    assert data["editable"] is False
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "provider", "source", "job_id"):
        v = variables[name]
        assert v["type"] == "query", name
        assert v["refresh"] == 2, name
        assert v["allValue"] == ".+", name
        assert v["definition"].startswith("label_values("), name
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
        if not (path.stem == "asyncjob-job" and name == "job_id"):  # one job in depth
            assert v["multi"] is True, name
            assert v["includeAll"] is True, name
    text = path.read_text()
    assert '"uid": "prometheus"' not in text  # no data source hard-wired
    for panel in data["panels"]:
        assert panel["title"], panel
        assert panel["description"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


@BOARD_PARAMS
def test_queries_follow_grafana_conventions(path: Path) -> None:
    """rate/increase use $__rate_interval, or $__range in an instant query (a total over the
    time range); date units get milliseconds; selectors are filtered."""
    for panel in board(path)["panels"]:
        unit = panel["fieldConfig"]["defaults"]["unit"]
        units = {unit} | {
            prop["value"]
            for override in panel["fieldConfig"]["overrides"]
            for prop in override["properties"]
            if prop["id"] == "unit"
        }
        for t in panel["targets"]:
            expr = t["expr"]
            for window in re.findall(r"\b(?:rate|increase)\([^\[]*\[([^\]]+)\]", expr):
                allowed = (
                    {"$__rate_interval", "$__range"} if t.get("instant") else {"$__rate_interval"}
                )
                assert window in allowed, (panel["title"], expr)
            # A timestamp is a date (Grafana wants ms) unless subtracted from now (a duration).
            is_date = "timestamp_seconds" in expr and "time() -" not in expr
            if is_date or unit.startswith("dateTime"):
                assert "* 1000" in expr, (panel["title"], expr)
                assert any(u.startswith("dateTime") for u in units), panel["title"]
            for selector in re.findall(r"asyncjob_\w+\{([^}]*)\}", expr):
                assert 'job=~"$job"' in selector, (panel["title"], selector)
    grid = [p["gridPos"] for p in board(path)["panels"]]
    assert all(g["x"] + g["w"] <= 24 for g in grid)


def test_provisioning_points_at_the_dashboards() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "asyncjob.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/asyncjob"


def test_every_metric_and_label_used_exists(make_harness: Callable[..., Harness]) -> None:
    """What dashboards and rules ask for is in the exporter's output (or Prometheus's own)."""
    h = make_harness(at=1000.0)
    h.sim.set_fault("batch-ok", Fault(status=404))  # so the failing-poll series exist too
    h.exporter.poll_once()
    m = h.scrape()
    exposed_metrics = {name for name, _ in m.samples}
    exposed_labels = {label for _, labels in m.samples for label, _ in labels}
    prometheus_own = {"up"}, {"job", "instance"}  # added by Prometheus to every scraped series
    checked = 0
    for query in dashboard_queries() + rule_expressions():
        metrics, labels = names(query.expr)
        assert metrics <= exposed_metrics | prometheus_own[0], (
            query.where,
            metrics - exposed_metrics,
        )
        assert labels <= exposed_labels | prometheus_own[1], (query.where, labels - exposed_labels)
        if query.label:
            assert query.label in exposed_labels | prometheus_own[1], query.where
        checked += 1
    assert checked == len(dashboard_queries()) + 16  # the queries and the 16 alert rules


def test_promtool_accepts_every_dashboard_query(tmp_path: Path) -> None:
    """A rule file with one recording rule per dashboard query passes `promtool check rules`."""
    queries = dashboard_queries()
    rules = [{"record": f"dashboard:query_{i}", "expr": q.expr} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run_tool("promtool", "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout
