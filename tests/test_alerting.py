"""The alert rules (generated, promtool-tested), the Alertmanager example (amtool and a real
Alertmanager: its routes, groups and inhibitions) and the Prometheus example."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import promql_parser
import pytest
import requests
import yaml
from conftest import REPO, run_tool, start_alertmanager, wait_until
from promql import nodes

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Processes, Webhook

RULES = REPO / "alerting" / "rules" / "asyncjob-alerts.yaml"
RULE_TESTS = REPO / "alerting" / "tests"
RUNBOOK = REPO / "alerting" / "runbook.md"
ALERTMANAGER = REPO / "alerting" / "alertmanager.example.yaml"
PROMETHEUS = REPO / "alerting" / "prometheus.example.yaml"
JOB_ALERTS = {
    "AsyncJobFailed",
    "AsyncJobPartiallySucceeded",
    "AsyncJobDocumentsFailed",
    "AsyncJobStalled",
    "AsyncJobOverdue",
    "AsyncJobQueuedTooLong",
    "AsyncJobPollingFailing",
    "AsyncJobStateUnknown",
}
SOURCE_ALERTS = {
    "AsyncJobSourcePollingFailing",
    "AsyncJobFailureRatioHigh",
    "AsyncJobUpstreamThrottled",
    "AsyncJobJobsRejected",
}
EXPORTER_ALERTS = {
    "AsyncJobExporterDown",
    "AsyncJobExporterAbsent",
    "AsyncJobShardMissing",
    "AsyncJobConfigReloadFailed",
}
REQUIRED = JOB_ALERTS | SOURCE_ALERTS | EXPORTER_ALERTS


def generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "alerting_generate", REPO / "alerting" / "generate_rules.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@functools.cache
def rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_committed_rules_match_the_generator() -> None:
    """alerting/rules/asyncjob-alerts.yaml is what alerting/generate_rules.py writes from monitoring.yaml."""
    result = subprocess.run(
        [sys.executable, "alerting/generate_rules.py", "--check"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_the_selector_is_a_setting() -> None:
    """Rendered with another selector, every metric selector of every rule carries it, and the
    default one is nowhere."""
    generate = generator()
    other = generate.Settings(
        'namespace="ai", job="jobs"', "https://g.example", "https://r.example/rb.md"
    )
    rendered = yaml.safe_load(generate.render(other))
    assert 'job="asyncjob"' not in json.dumps(rendered)
    checked = 0
    for group in rendered["groups"]:
        for rule in group["rules"]:
            for node in nodes(rule["expr"]):
                if isinstance(node, promql_parser.VectorSelector):
                    matchers = {(m.name, m.value) for m in node.matchers.matchers}
                    assert {("namespace", "ai"), ("job", "jobs")} <= matchers, rule["alert"]
                    checked += 1
            assert rule["annotations"]["runbook_url"].startswith("https://r.example/rb.md#")
            assert rule["annotations"]["dashboard_url"].startswith("https://g.example/d/")
    assert checked > len(REQUIRED)


def test_per_source_rules_add_up_the_shards() -> None:
    """A per-source figure is one sum over every shard: no `instance` in its grouping."""
    for name in SOURCE_ALERTS:
        aggregations = [
            node for node in nodes(rules()[name]["expr"])
            if isinstance(node, promql_parser.AggregateExpr)
        ]  # fmt: skip
        assert aggregations, name
        for node in aggregations:
            assert node.modifier is not None, name
            assert set(node.modifier.labels) == {"job", "provider", "source"}, name


def test_promtool_check_rules() -> None:
    result = run_tool("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(REQUIRED)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    files = sorted(str(p) for p in RULE_TESTS.glob("*.yaml"))
    assert files
    result = run_tool("promtool", "test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    """...and the first case, a quiet exporter's history, checks every alert stays silent."""
    fired: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS.glob("*.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case["alert_rule_test"]:
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fired == REQUIRED
    assert silent == REQUIRED
    history = yaml.safe_load((RULE_TESTS / "asyncjob-alerts.test.yaml").read_text())["tests"][0]
    assert history["name"].startswith("History pages nothing")
    assert {c["alertname"] for c in history["alert_rule_test"] if not c["exp_alerts"]} == REQUIRED


def test_rule_conventions() -> None:
    """CamelCase names, a `for:` and a known severity, a plain summary, a templated description,
    absolute links from monitoring.yaml to a runbook section and a dashboard for the source."""
    settings = generator().settings()
    by_name = rules()
    assert set(by_name) == REQUIRED
    anchors = {
        re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    uids = {
        json.loads(p.read_text())["uid"] for p in (REPO / "grafana" / "dashboards").glob("*.json")
    }
    for name, rule in by_name.items():
        assert re.fullmatch(r"(?:[A-Z][a-z]+)+", name), name
        assert re.fullmatch(r"\d+m", rule["for"]), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        notes = rule["annotations"]
        assert "{{" not in notes["summary"], name
        assert notes["summary"].endswith("."), name
        assert ". " not in notes["summary"], f"{name}: the summary is one sentence"
        assert "$value" in notes["description"], name
        assert notes["runbook_url"] == f"{settings.runbook_url}#{name.lower()}", name
        assert name.lower() in anchors, f"{name}: no '## {name}' section in runbook.md"
        board, _, query = (
            notes["dashboard_url"].removeprefix(f"{settings.grafana_url}/d/").partition("?")
        )
        assert board in uids, name
        if name in JOB_ALERTS:
            assert "{{ $labels.job_id }}" in notes["description"], name
            assert "{{ $labels.source }}" in notes["description"], name
            assert query == "var-source={{ $labels.source }}&var-job_id={{ $labels.job_id }}", name
        elif name in SOURCE_ALERTS:
            assert query == "var-source={{ $labels.source }}", name
    # Only a monitoring gap pages (the mixins' critical); a job or a source needs someone later.
    critical = {name for name, rule in by_name.items() if rule["labels"]["severity"] == "critical"}
    assert critical == {"AsyncJobExporterDown", "AsyncJobExporterAbsent", "AsyncJobShardMissing"}


def test_alertmanager_config_is_valid() -> None:
    result = run_tool("amtool", "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 inhibit rules" in result.stdout
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert config["route"]["group_by"] == ["alertname", "job", "provider", "source"]


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=AsyncJobExporterDown", "severity=critical"], "pager"),
        (["alertname=AsyncJobShardMissing", "severity=critical"], "pager"),
        (["alertname=AsyncJobFailed", "severity=warning"], "team-chat"),
        (["alertname=AsyncJobSourcePollingFailing", "severity=warning"], "team-chat"),
        (["alertname=AsyncJobUpstreamThrottled", "severity=info"], "low-priority"),
        (["alertname=SomethingElse"], "team-chat"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    result = run_tool(
        "amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receiver}", *labels,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def alert(name: str, **labels: str) -> dict[str, Any]:
    """An alert as Prometheus sends it, with its rule's severity."""
    severity = rules()[name]["labels"]["severity"]
    return {"labels": {"alertname": name, "severity": severity, **labels}}


def post(url: str, alerts: list[dict[str, Any]]) -> None:
    response = requests.post(f"{url}/api/v2/alerts", json=alerts, timeout=30)
    assert response.status_code == 200, response.text


def key(labels: dict[str, str]) -> tuple[str, str, str]:
    """An alert of the inhibition cases by its name, scrape job, and job ID or instance."""
    return labels["alertname"], labels["job"], labels.get("job_id", labels.get("instance", ""))


def states(url: str) -> dict[tuple[str, str, str], str]:
    """Every alert's state in Alertmanager: active or suppressed."""
    alerts = requests.get(f"{url}/api/v2/alerts", timeout=30).json()
    return {key(a["labels"]): a["status"]["state"] for a in alerts}


# Each case is one scrape job (`job`), so that the cases cannot inhibit one another.
T = {"provider": "azure_document_translation", "source": "translator"}
OTHER = {"provider": "azure_language_training", "source": "language-training"}
INHIBITION_CASES: dict[str, list[tuple[dict[str, Any], str]]] = {
    "per-source polling silences that source's job alerts": [
        (alert("AsyncJobSourcePollingFailing", job="c1", **T), "active"),
        (alert("AsyncJobPollingFailing", job="c1", instance="e", job_id="a", **T), "suppressed"),
        (alert("AsyncJobStalled", job="c1", instance="e", job_id="b", **T), "suppressed"),
        (alert("AsyncJobPollingFailing", job="c1", instance="e", job_id="c", **OTHER), "active"),
    ],
    "a failed batch does not also page for its failed documents": [
        (alert("AsyncJobFailed", job="c2", instance="e", job_id="x", **T), "active"),
        (
            alert(
                "AsyncJobDocumentsFailed", job="c2", instance="e", job_id="x", state="failed", **T
            ),
            "suppressed",
        ),
        (
            alert(
                "AsyncJobDocumentsFailed", job="c2", instance="e", job_id="y", state="failed", **T
            ),
            "active",
        ),
    ],
    "a source's failure ratio silences its failed jobs": [
        (alert("AsyncJobFailureRatioHigh", job="c3", **T), "active"),
        (alert("AsyncJobFailed", job="c3", instance="e", job_id="f", **T), "suppressed"),
        (alert("AsyncJobFailed", job="c3", instance="e", job_id="g", **OTHER), "active"),
    ],
    "a down exporter silences its job alerts and its missing shard": [
        (alert("AsyncJobExporterDown", job="c4", instance="i1"), "active"),
        (alert("AsyncJobStalled", job="c4", instance="i1", job_id="s1", **T), "suppressed"),
        (alert("AsyncJobStalled", job="c4", instance="i2", job_id="s2", **T), "active"),
        (alert("AsyncJobShardMissing", job="c4", total_shards="3"), "suppressed"),
    ],
    "a job that cannot be polled is not also late": [
        (alert("AsyncJobPollingFailing", job="c5", instance="e", job_id="p", **T), "active"),
        (alert("AsyncJobOverdue", job="c5", instance="e", job_id="p", **T), "suppressed"),
        (alert("AsyncJobOverdue", job="c5", instance="e", job_id="q", **T), "active"),
    ],
    "throttling silences nothing": [
        (alert("AsyncJobUpstreamThrottled", job="c6", **T), "active"),
        (alert("AsyncJobPollingFailing", job="c6", instance="e", job_id="t", **T), "active"),
    ],
}


def test_alertmanager_inhibits_as_the_example_says(
    processes: Processes, webhook: Webhook, tmp_path: Path
) -> None:
    """Alert sets posted to a real Alertmanager running the example config: the per-source
    alerts silence their per-job alerts, a failed batch its documents, and so on."""
    url = start_alertmanager(processes, tmp_path, webhook.url)
    for case in INHIBITION_CASES.values():
        post(url, [a for a, _ in case])
    expected = {key(a["labels"]): state for case in INHIBITION_CASES.values() for a, state in case}
    wait_until(lambda: states(url) == expected, 20, "the inhibitions of every case")
    # What reaches a receiver is the active alerts, and none of the suppressed ones.
    active = {key for key, state in expected.items() if state == "active"}

    wait_until(lambda: {key(a["labels"]) for a in list(webhook.alerts)} == active, 20,
               "a notification of each active alert")  # fmt: skip


def test_a_thousand_failing_jobs_of_one_source_are_one_notification(
    processes: Processes, webhook: Webhook, tmp_path: Path
) -> None:
    """1,000 failed jobs of one source (and 3 of another) make two groups: one notification
    for the source with all 1,000, as amtool and the groups API show."""
    # The group waits 5 s, as the example's 30 s, for all its alerts to arrive.
    url = start_alertmanager(processes, tmp_path, webhook.url, group_wait="5s")
    failed = [alert("AsyncJobFailed", job="asyncjob", instance=f"shard-{i % 3}:9879",
                    job_id=f"batch-{i}", **T) for i in range(1000)]  # fmt: skip
    failed += [alert("AsyncJobFailed", job="asyncjob", instance="shard-0:9879",
                     job_id=f"train-{i}", **OTHER) for i in range(3)]  # fmt: skip
    post(url, failed)

    def groups() -> list[dict[str, Any]]:
        answer = requests.get(f"{url}/api/v2/alerts/groups", timeout=30).json()
        return [g for g in answer if g["alerts"]]

    found = wait_until(lambda: sum(len(g["alerts"]) for g in groups()) == 1003 and groups(),
                       30, "1,003 alerts in Alertmanager")  # fmt: skip
    sizes = {g["labels"]["source"]: len(g["alerts"]) for g in found}
    assert sizes == {"translator": 1000, "language-training": 3}
    assert found[0]["labels"].keys() == {"alertname", "job", "provider", "source"}
    listed = run_tool(
        "amtool", "alert", "query", f"--alertmanager.url={url}", "--output=json",
        "alertname=AsyncJobFailed", "source=translator",
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1000
    wait_until(lambda: len(webhook.notifications) == 2, 20, "one notification per source")
    by_source = {n["groupLabels"]["source"]: len(n["alerts"]) for n in webhook.notifications}
    assert by_source == {"translator": 1000, "language-training": 3}


def test_prometheus_example_is_valid_and_scrapes_the_default_port() -> None:
    result = run_tool("promtool", "check", "config", str(PROMETHEUS))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "asyncjob"  # the name the rules match on
    assert job["static_configs"][0]["targets"] == ["asyncjob-exporter:9879"]
