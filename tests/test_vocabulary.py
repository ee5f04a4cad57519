"""The one vocabulary (exporter/model.py): every shipped rule, rule test and dashboard names only
the states it has, and the status page and the jobs API speak it alike."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import promql_parser
import pytest
import yaml
from conftest import REPO
from promql import dashboard_queries, nodes

from exporter import status_page
from exporter.model import (
    DOCUMENT_STATES,
    NOT_POLLED,
    RECORD_STATES,
    STALL_AFTER,
    STATE_COLOURS,
    TASK_STATES,
    TERMINAL_STATES,
    ErrorReason,
    JobSnapshot,
    Origin,
    State,
)
from exporter.store import JobRecord

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SHIPPED_RULES = {
    REPO / "alerting" / "rules" / "asyncjob-alerts.yaml",
    REPO / "alerting" / "rules" / "asyncjob-recording.yaml",
    REPO / "deploy" / "kubernetes" / "components" / "monitoring" / "prometheusrule.yaml",
}
_SKIPPED = {".git", ".venv", ".tools", "node_modules", "test-artifacts"}
_JOB_STATES = tuple(State)
_FINISHED = tuple(state for state in State if state in TERMINAL_STATES)


# The metrics whose `state` or `reason` takes values from a narrower list than the job states.
_STATES: dict[str, tuple[str, ...]] = {
    "asyncjob_tasks": TASK_STATES,
    "asyncjob_documents": DOCUMENT_STATES,
    "asyncjob_jobs_finished_total": _FINISHED,
    **{f"asyncjob_job_duration_seconds{part}": _FINISHED for part in ("_bucket", "_count", "_sum")},
}
_REASONS = dict.fromkeys(
    ("asyncjob_request_errors_total", "asyncjob_last_poll_error_info"), tuple(ErrorReason)
)


def vocabulary(metric: str | None, label: str) -> tuple[str, ...] | None:
    """The values a label may take on a metric (None: a label the vocabulary does not own).
    A series whose name is not known here (a recording rule's) carries job states."""
    if label == "origin":
        return tuple(Origin)
    if label == "reason":
        return _REASONS.get(metric or "")
    if label == "state":
        return _STATES.get(metric or "", _JOB_STATES)
    return None


@dataclass(frozen=True)
class Problem:
    where: str
    text: str


def _matchers(node: Any) -> list[Any]:
    """A selector's matchers, those of each `or` branch included."""
    found = list(node.matchers.matchers)
    for branch in node.matchers.or_matchers or []:
        found.extend(branch)
    return found


def _values(matcher: Any) -> list[str] | str:
    """The label values a matcher names; a string says why they cannot be read. A regex must be
    an alternation of plain values (`a|b`): anything else could match values nobody checked."""
    text: str = matcher.value
    if matcher.op in (promql_parser.MatchOp.Equal, promql_parser.MatchOp.NotEqual):
        return [text]
    alternatives = text.split("|")
    if any(not value or re.escape(value) != value for value in alternatives):
        return f"{matcher.name}=~{text!r} is not an alternation of plain values"
    return alternatives


def problems(expr: str, where: str) -> list[Problem]:
    """Every value of a vocabulary label in `expr` that the vocabulary lacks."""
    found = []
    for node in nodes(expr):
        if not isinstance(node, promql_parser.VectorSelector):
            continue
        matchers = _matchers(node)
        metric = node.name or next(
            (m.value for m in matchers if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal),
            None,
        )  # fmt: skip
        for matcher in matchers:
            allowed = vocabulary(metric, matcher.name)
            if allowed is None:
                continue
            values = _values(matcher)
            if isinstance(values, str):
                found.append(Problem(where, values))
                continue
            found += [
                Problem(where, f"{metric or 'a series'} has no {matcher.name} {value!r} "
                               f"(the vocabulary: {', '.join(allowed)})")
                for value in values if value not in allowed
            ]  # fmt: skip
    return found


def _yaml_files() -> Iterator[Path]:
    for path in sorted(REPO.rglob("*.y*ml")):
        if not _SKIPPED & set(path.relative_to(REPO).parts):
            yield path


def _groups(document: Any) -> list[Any] | None:
    """The rule groups of a Prometheus rule file or a PrometheusRule object, else None."""
    if isinstance(document, dict) and document.get("kind") == "PrometheusRule":
        document = document.get("spec")
    groups = document.get("groups") if isinstance(document, dict) else None
    if isinstance(groups, list) and all(isinstance(g, dict) and "rules" in g for g in groups):
        return groups
    return None


@functools.cache
def shipped() -> tuple[dict[Path, list[tuple[str, str]]], dict[Path, list[tuple[str, str]]]]:
    """Every rule file and promtool test file in the repository: (where, PromQL) of each rule
    expression, and of each test's input series, expression and expected sample."""
    rules: dict[Path, list[tuple[str, str]]] = {}
    tests: dict[Path, list[tuple[str, str]]] = {}
    for path in _yaml_files():
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError:
            continue  # not YAML Prometheus reads (a template)
        name = path.relative_to(REPO)
        for document in documents:
            groups = _groups(document)
            if groups is not None:
                rules.setdefault(path, []).extend(
                    (f"{name}: {rule.get('alert') or rule.get('record')}", rule["expr"])
                    for group in groups
                    for rule in group["rules"]
                )
            elif isinstance(document, dict) and {"rule_files", "tests"} <= set(document):
                tests[path] = [
                    (f"{name}: test {i}", expr)
                    for i, case in enumerate(document["tests"])
                    for expr in _test_expressions(case)
                ]
    return rules, tests


def _test_expressions(case: dict[str, Any]) -> Iterator[str]:
    for series in case.get("input_series", []):
        yield series["series"]
    for check in case.get("promql_expr_test", []):
        yield check["expr"]
        for sample in check.get("exp_samples") or []:
            if sample.get("labels"):
                yield sample["labels"]


def test_every_shipped_rule_file_is_checked() -> None:
    """The search finds the rule files we ship (and any other), and their rule tests."""
    rules, tests = shipped()
    assert set(rules) >= SHIPPED_RULES
    assert REPO / "alerting" / "tests" / "asyncjob-alerts.test.yaml" in tests
    assert sum(len(exprs) for exprs in rules.values()) > 30


def test_rules_name_only_states_the_vocabulary_has() -> None:
    """A `state` (task, document or job), `origin` or error `reason` value in any shipped alert
    or recording rule, or in the series their promtool tests feed them, is in the vocabulary."""
    rules, tests = shipped()
    found = [
        problem
        for exprs in (*rules.values(), *tests.values())
        for where, expr in exprs
        for problem in problems(expr, where)
    ]
    assert found == []


def test_dashboards_name_only_states_the_vocabulary_has() -> None:
    found = [problem for q in dashboard_queries() for problem in problems(q.expr, q.where)]
    assert found == []


@pytest.mark.parametrize(
    ("expr", "wrong"),
    [
        ('asyncjob_state{state="stalled"} == 1', "'stalled'"),
        ('asyncjob_state{state=~"running|runing"}', "'runing'"),
        ('asyncjob_state{state!="not_polled"}', "'not_polled'"),  # a page's, not a series'
        ('asyncjob_state{state!~"done"}', "'done'"),
        ('asyncjob_state{state=~"fail.*"}', "not an alternation"),
        ('asyncjob_tasks{state="succeeded"}', "'succeeded'"),  # a document state, not a task's
        ('asyncjob_documents{state="completed"}', "'completed'"),
        ('{__name__="asyncjob_tasks", state="not_started"}', "'not_started'"),
        ('increase(asyncjob_jobs_finished_total{state="running"}[1h])', "'running'"),
        ('sum by (state) (job:foo:sum{state="Failed"})', "'Failed'"),
        ('asyncjob_state{state="failed" or state="broken"}', "'broken'"),
        ('asyncjob_request_errors_total{reason="throttling"}', "'throttling'"),
        ('foo{origin="cli"}', "'cli'"),
    ],
)  # fmt: skip
def test_a_value_the_vocabulary_lacks_fails(expr: str, wrong: str) -> None:
    """The check is not vacuous: each of these is reported, and only once."""
    (problem,) = problems(expr, "here")
    assert wrong in problem.text


def test_a_rule_file_with_a_bad_state_fails(tmp_path: Path) -> None:
    """A rule file with a misspelt state, read as the shipped ones are, is reported."""
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(
        "groups:\n- name: g\n  rules:\n  - alert: Typo\n"
        '    expr: asyncjob_state{state=~"running|partialy_succeeded"} == 1\n'
    )
    groups = _groups(yaml.safe_load(rule_file.read_text()))
    assert groups is not None
    found = [p for g in groups for rule in g["rules"] for p in problems(rule["expr"], "Typo")]
    assert [p.text.split(" (")[0] for p in found] == [
        "asyncjob_state has no state 'partialy_succeeded'"
    ]


def test_good_values_pass() -> None:
    assert problems('asyncjob_state{state=~"not_started|running", state!="unknown"}', "x") == []
    assert problems('asyncjob_tasks{state="completed"} + asyncjob_documents{state="succeeded"}',
                    "x") == []  # fmt: skip


def test_the_stall_alert_and_the_status_page_share_the_threshold() -> None:
    """AsyncJobStalled fires after STALL_AFTER without a change, the page's 'stalled' note."""
    groups = yaml.safe_load((REPO / "alerting" / "rules" / "asyncjob-alerts.yaml").read_text())
    (rule,) = [r for g in groups["groups"] for r in g["rules"] if r["alert"] == "AsyncJobStalled"]
    assert f"> {round(STALL_AFTER.total_seconds())}\n" in rule["expr"]


def test_every_state_has_a_colour_in_the_dashboards_too() -> None:
    """The colour table covers every state a job can be listed in, and the Overview's state
    colours are those of the status page."""
    assert set(STATE_COLOURS) == set(RECORD_STATES)
    overview = json.loads((REPO / "grafana" / "dashboards" / "asyncjob-overview.json").read_text())
    colours = {
        override["matcher"]["options"]: override["properties"][0]["value"]["fixedColor"]
        for panel in overview["panels"] if panel["title"] == "Jobs by state"
        for override in panel["fieldConfig"]["overrides"]
    }  # fmt: skip
    assert colours == {state.value: STATE_COLOURS[state] for state in State}


def test_the_page_and_the_api_spell_the_never_polled_state_alike() -> None:
    """A job with no answer yet is `not_polled` in the page's filter and rows, as in the jobs
    API (`?state=not_polled`); the page writes it in words."""
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    running = JobSnapshot(state=State.RUNNING, vendor_status="running", progress={"overall": 0.5})
    jobs = [
        JobRecord("azure_document_translation", "translator", "fresh", now),
        JobRecord("azure_document_translation", "translator", "polled", now, snapshot=running),
    ]
    view = status_page.View(state=NOT_POLLED, attention=False)
    page = status_page.render(jobs, "/metrics", now, view).decode()
    assert re.findall(r'data-job-id="([^"]+)" data-state="([^"]+)"', page) == [
        ("fresh", "not_polled")
    ]
    assert ">not polled</span>" in page
    assert "<option value='not_polled' selected>not polled</option>" in page
