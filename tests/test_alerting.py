"""The alert rules, their promtool unit tests, the Alertmanager and Prometheus examples."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from conftest import REPO, run_tool

RULES = REPO / "alerting" / "rules" / "asyncjob-alerts.yaml"
RULE_TESTS = REPO / "alerting" / "tests"
RUNBOOK = REPO / "alerting" / "runbook.md"
ALERTMANAGER = REPO / "alerting" / "alertmanager.example.yaml"
PROMETHEUS = REPO / "alerting" / "prometheus.example.yaml"
REQUIRED = {
    "AsyncJobFailed",
    "AsyncJobPartiallySucceeded",
    "AsyncJobDocumentsFailed",
    "AsyncJobStalled",
    "AsyncJobOverdue",
    "AsyncJobQueuedTooLong",
    "AsyncJobPollingFailing",
    "AsyncJobUpstreamThrottled",
    "AsyncJobFailureRatioHigh",
    "AsyncJobExporterDown",
    "AsyncJobExporterAbsent",
}
JOB_ALERTS = REQUIRED - {
    "AsyncJobUpstreamThrottled",
    "AsyncJobFailureRatioHigh",
    "AsyncJobExporterDown",
    "AsyncJobExporterAbsent",
}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    result = run_tool("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    files = sorted(str(p) for p in RULE_TESTS.glob("*.yaml"))
    assert files
    result = run_tool("promtool", "test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS.glob("*.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case["alert_rule_test"]:
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fired == REQUIRED
    assert silent == REQUIRED


def test_rule_conventions() -> None:
    """CamelCase names, a known severity, a plain summary, a templated description, links."""
    by_name = {rule["alert"]: rule for rule in rules()}
    assert set(by_name) == REQUIRED
    anchors = {
        re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    for name, rule in by_name.items():
        assert re.fullmatch(r"(?:[A-Z][a-z]+)+", name), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        notes = rule["annotations"]
        assert "{{" not in notes["summary"], name
        assert notes["summary"].endswith("."), name
        assert ". " not in notes["summary"], f"{name}: the summary is one sentence"
        assert "$value" in notes["description"], name
        if name in JOB_ALERTS:
            assert "{{ $labels.job_id }}" in notes["description"], name
            assert "{{ $labels.source }}" in notes["description"], name
            assert notes["dashboard_url"].endswith("var-job_id={{ $labels.job_id }}"), name
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "alerting/runbook.md", name
        assert anchor == name.lower(), name
        assert anchor in anchors, f"{name}: no '## {name}' section in runbook.md"


def test_alertmanager_config_is_valid() -> None:
    result = run_tool("amtool", "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 inhibit rules" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=AsyncJobFailed", "severity=critical"], "pager"),
        (["alertname=AsyncJobExporterDown", "severity=critical"], "pager"),
        (["alertname=AsyncJobStalled", "severity=warning"], "team-chat"),
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


def test_alertmanager_groups_and_inhibits() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert config["route"]["group_by"] == ["alertname", "job_id"]
    sources = {rule["source_matchers"][0] for rule in config["inhibit_rules"]}
    assert sources == {'alertname="AsyncJobExporterDown"', 'alertname="AsyncJobPollingFailing"'}
    down = next(r for r in config["inhibit_rules"] if "ExporterDown" in r["source_matchers"][0])
    pattern = re.search(r'alertname=~"(.*)"', down["target_matchers"][0])
    assert pattern
    assert {a for a in REQUIRED if re.fullmatch(pattern[1], a)} == REQUIRED - {
        "AsyncJobExporterDown",
        "AsyncJobExporterAbsent",
    }


def test_prometheus_example_is_valid_and_scrapes_the_default_port() -> None:
    result = run_tool("promtool", "check", "config", str(PROMETHEUS))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "asyncjob"  # the name the rules match on
    assert job["static_configs"][0]["targets"] == ["asyncjob-exporter:9879"]
