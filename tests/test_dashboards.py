"""The Grafana dashboards and the Overview's recording rules: generated files up to date, the
settings in monitoring.yaml, grafana/dashboard-linter's rules (the linter itself cannot be
installed here), an Overview that stays bounded at any number of jobs, every query meaningful."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import promql_parser
import pytest
import yaml
from conftest import REPO, Harness, run_tool
from promql import (
    DASHBOARDS,
    OVERVIEW,
    RECORDING_RULES,
    Query,
    board,
    dashboard_queries,
    names,
    panels,
    recording_rules,
    rule_expressions,
    targets,
    variable_queries,
    walk,
)

from exporter.simulator import Fault

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

PROVISIONING = REPO / "grafana" / "provisioning"
LINT = REPO / "grafana" / "dashboards" / ".lint"
RECORDING_TESTS = REPO / "alerting" / "tests" / "recording"
SELECTOR = yaml.safe_load((REPO / "monitoring.yaml").read_text())["selector"]
BOARD_PARAMS = pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's windows as durations no dashboard writes, so a parsed range tells which it was.
RATE_INTERVAL, INTERVAL, RANGE = 1111, 2222, 3333
WINDOWS = {"$__rate_interval": f"{RATE_INTERVAL}s", "$__interval": f"{INTERVAL}s",
           "$__range": f"{RANGE}s", "$price_per_million_characters": "15"}  # fmt: skip
# dashboard-linter's panel-units-rule list, the part a dashboard like these can use.
UNITS = {"none", "short", "percent", "percentunit", "s", "ms", "m", "h", "d", "dtdurations",
         "dateTimeAsIso", "dateTimeAsIsoNoDateIfToday", "dateTimeFromNow", "reqps", "ops",
         "cps", "bytes", "decbytes", "currencyUSD", "currencyEUR", "bool"}  # fmt: skip


def test_committed_files_match_the_generator() -> None:
    """Dashboards and recording rules are what grafana/generate.py writes (`make monitoring`)."""
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


def test_the_selector_is_a_setting(tmp_path: Path) -> None:
    """The generator takes the scrape-job selector from monitoring.yaml: with another one, not a
    trace of the old is left in the dashboards or the rules."""
    (tmp_path / "grafana").mkdir()
    shutil.copy(REPO / "grafana" / "generate.py", tmp_path / "grafana")
    settings = (REPO / "monitoring.yaml").read_text()
    assert settings.count(SELECTOR) == 1
    (tmp_path / "monitoring.yaml").write_text(settings.replace(SELECTOR, 'job="ai-jobs"'))
    subprocess.run([sys.executable, "grafana/generate.py"], cwd=tmp_path, check=True, timeout=60)
    written = [*(tmp_path / "grafana" / "dashboards").glob("*.json"),
               tmp_path / "alerting" / "rules" / "asyncjob-recording.yaml"]  # fmt: skip
    assert len(written) == 3
    for path in written:
        text = path.read_text()
        assert 'job="ai-jobs"' in text or 'job=\\"ai-jobs\\"' in text, path.name
        assert SELECTOR not in text, path.name
        assert json.dumps(SELECTOR)[1:-1] not in text, path.name
    assert (
        'job="' not in (REPO / "grafana" / "generate.py").read_text()
    )  # no selector but the setting


@BOARD_PARAMS
def test_dashboard_is_portable(path: Path) -> None:
    """Fixed uid, pinned schema, read-only, no __inputs, refreshed every minute, the variables
    every panel filters by, links to the other dashboards that keep the variables."""
    data = board(path)
    assert "__inputs" not in data
    assert data["uid"] == path.stem
    assert data["schemaVersion"] == 39
    assert data["refresh"] == "1m"
    variables = {v["name"]: v for v in data["templating"]["list"]}
    names_ = ["datasource", "job", "instance", "provider", "source"]
    if path.stem == "asyncjob-job":
        names_.append("job_id")  # the job_id choice is here only: one job in depth
        assert variables["job_id"]["multi"] is variables["job_id"]["includeAll"] is False
    else:
        names_.append("price_per_million_characters")
    assert list(variables) == names_
    (link,) = data["links"]
    assert link["type"] == "dashboards"
    assert link["includeVars"] is link["keepTime"] is True
    assert '"uid": "prometheus"' not in path.read_text()  # no data source hard-wired
    for panel in data["panels"]:
        if panel["type"] == "row":
            assert panel["gridPos"]["w"] == 24
            assert panel["panels"] == []  # open rows: their panels follow them
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == DATASOURCE, panel["title"]
    grid = [p["gridPos"] for p in data["panels"]]
    assert all(g["x"] + g["w"] <= 24 for g in grid)
    assert data["panels"][0]["type"] == "row"  # every panel sits in a row, as the mixins lay out


def test_the_price_is_a_visible_editable_variable() -> None:
    variables = {v["name"]: v for v in board(OVERVIEW)["templating"]["list"]}
    price = variables["price_per_million_characters"]
    assert price["type"] == "textbox"
    assert price["hide"] == 0
    assert price["query"] == price["current"]["value"] == "15"
    (cost,) = [
        p for p in panels(board(OVERVIEW)) if p["title"].startswith("Estimated translation cost")
    ]
    assert "$price_per_million_characters" in cost["targets"][0]["expr"]


@BOARD_PARAMS
def test_queries_follow_grafana_conventions(path: Path) -> None:
    """Windows: $__rate_interval in rate; in increase, $__range in an instant query (a total
    over the time range) or $__interval in a panel with a minimum interval (per day, per hour).
    Date units get milliseconds; metrics that any target has carry the configured selector."""
    recorded = set(recording_rules())
    for t in targets(board(path)):
        panel = t.panel
        unit = panel["fieldConfig"]["defaults"]["unit"]
        units = {unit} | {
            prop["value"]
            for override in panel["fieldConfig"]["overrides"]
            for prop in override["properties"]
            if prop["id"] == "unit"
        }
        for function, window in re.findall(r"\b(rate|increase)\([^\[]*\[([^\]]+)\]", t.expr):
            allowed = {"$__rate_interval"}
            if function == "increase":
                allowed |= (
                    {"$__range"} if t.instant else {"$__interval"} if "interval" in panel else set()
                )
            assert window in allowed, (t.where, t.expr)
        # A timestamp is a date (Grafana wants ms) unless subtracted (a duration).
        is_date = "timestamp_seconds" in t.expr and " - " not in t.expr
        if is_date or unit.startswith("dateTime"):
            assert "* 1000" in t.expr, (t.where, t.expr)
            assert any(u.startswith("dateTime") for u in units), t.where
        for node, _ in walk(_lintable(t.expr)):
            if not isinstance(node, promql_parser.VectorSelector):
                continue
            name = node.name or ""
            if not (name.startswith("asyncjob_") or name in recorded):  # up, scrape_*, process_*
                assert SELECTOR in str(node.matchers), (t.where, str(node))


# grafana/dashboard-linter's rules, each as a function yielding what it would report as
# (dashboard title, panel title, target index) -- the keys of its .lint exclusions.
@dataclass(frozen=True)
class Finding:
    dashboard: str
    panel: str = ""
    target: int | None = None


def _lintable(expr: str) -> str:
    """The expression as the linter parses it: windows made durations, `$job` left a string."""
    for name, value in WINDOWS.items():
        expr = expr.replace(name, value)
    return expr


def _variables(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in data["templating"]["list"]}


def template_datasource_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """A datasource variable named `datasource`, labelled "Data source", for Prometheus."""
    ds = [v for v in data["templating"]["list"] if v["type"] == "datasource"]
    if [(v["name"], v["label"], v["query"]) for v in ds] != [
        ("datasource", "Data source", "prometheus")
    ]:
        yield Finding(data["title"])


def _template(data: dict[str, Any], name: str) -> Iterator[Finding]:
    v = _variables(data).get(name)
    if v is None or (v["type"], v["datasource"], v["label"], v["multi"], v["allValue"]) != (
        "query",
        DATASOURCE,
        name.title(),
        True,
        ".+",
    ):
        yield Finding(data["title"])


def template_job_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """A `job` query variable: the data source variable, labelled "Job", multi-select, All = .+."""
    return _template(data, "job")


def template_instance_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """An `instance` variable, as the `job` one."""
    return _template(data, "instance")


def template_on_time_change_reload_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """Query variables are refreshed when the time range changes (refresh 2)."""
    for v in data["templating"]["list"]:
        if v["type"] == "query" and v["refresh"] != 2:
            yield Finding(data["title"], v["name"])


def template_label_promql_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """label_values() selectors are valid PromQL."""
    for name, selector, _ in variable_queries(data):
        try:
            promql_parser.parse(_lintable(selector))
        except ValueError:
            yield Finding(data["title"], name)


def uneditable_dashboard(data: dict[str, Any]) -> Iterator[Finding]:
    """Provisioned dashboards are not editable in Grafana."""
    if data["editable"] is not False:
        yield Finding(data["title"])


def panel_datasource_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """Every panel and target uses the datasource variable."""
    for panel in panels(data):
        if panel["datasource"] != DATASOURCE or any(
            t["datasource"] != DATASOURCE for t in panel["targets"]
        ):
            yield Finding(data["title"], panel["title"])


def panel_title_description_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """Every panel has a title and a description (here: of every type, not only the linter's)."""
    for panel in panels(data):
        if not (panel["title"] and panel["description"]):
            yield Finding(data["title"], panel["title"])


def panel_units_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """Every panel has a valid unit (here: of every type, and its overrides too)."""
    for panel in panels(data):
        config = panel["fieldConfig"]
        units = [config["defaults"].get("unit")] + [
            p["value"] for o in config["overrides"] for p in o["properties"] if p["id"] == "unit"
        ]
        if not all(unit in UNITS for unit in units):
            yield Finding(data["title"], panel["title"])


def panel_no_targets_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """Every panel queries something."""
    for panel in panels(data):
        if not panel["targets"]:
            yield Finding(data["title"], panel["title"])


def target_promql_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """Every target is valid PromQL."""
    for t in targets(data):
        try:
            promql_parser.parse(_lintable(t.expr))
        except ValueError:
            yield Finding(data["title"], t.panel["title"], t.index)


def target_rate_interval_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """rate() and irate() take $__rate_interval, and $__rate_interval is for them alone."""
    for t in targets(data):
        for node, parents in walk(_lintable(t.expr)):
            if not isinstance(node, promql_parser.MatrixSelector):
                continue
            seconds = node.range.total_seconds()
            call = parents[-1] if parents and isinstance(parents[-1], promql_parser.Call) else None
            in_rate = call is not None and call.func.name in {"rate", "irate"}
            if (seconds == RATE_INTERVAL) != in_rate:
                yield Finding(data["title"], t.panel["title"], t.index)


def _matcher_rule(data: dict[str, Any], label: str) -> Iterator[Finding]:
    for t in targets(data):
        for node, _ in walk(_lintable(t.expr)):
            if isinstance(node, promql_parser.VectorSelector) and f'{label}=~"${label}"' not in str(
                node.matchers
            ):
                yield Finding(data["title"], t.panel["title"], t.index)
                break


def target_job_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """Every selector has job=~"$job"."""
    return _matcher_rule(data, "job")


def target_instance_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """Every selector has instance=~"$instance"."""
    return _matcher_rule(data, "instance")


def target_counter_agg_rule(data: dict[str, Any]) -> Iterator[Finding]:
    """A counter (a name ending in _total) is read only as rate(), irate() or increase() of a
    range: its raw value means nothing across restarts."""
    for t in targets(data):
        for node, parents in walk(_lintable(t.expr)):
            if not (
                isinstance(node, promql_parser.VectorSelector)
                and (node.name or "").endswith("_total")
            ):
                continue
            ok = (
                len(parents) >= 2
                and isinstance(parents[-1], promql_parser.MatrixSelector)
                and isinstance(parents[-2], promql_parser.Call)
                and parents[-2].func.name in {"rate", "irate", "increase"}
            )
            if not ok:
                yield Finding(data["title"], t.panel["title"], t.index)
                break


LINT_RULES: dict[str, Callable[[dict[str, Any]], Iterator[Finding]]] = {
    "template-datasource-rule": template_datasource_rule,
    "template-job-rule": template_job_rule,
    "template-instance-rule": template_instance_rule,
    "template-label-promql-rule": template_label_promql_rule,
    "template-on-time-change-reload-rule": template_on_time_change_reload_rule,
    "panel-datasource-rule": panel_datasource_rule,
    "panel-title-description-rule": panel_title_description_rule,
    "panel-units-rule": panel_units_rule,
    "panel-no-targets-rule": panel_no_targets_rule,
    "target-promql-rule": target_promql_rule,
    "target-rate-interval-rule": target_rate_interval_rule,
    "target-job-rule": target_job_rule,
    "target-instance-rule": target_instance_rule,
    "target-counter-agg-rule": target_counter_agg_rule,
    "uneditable-dashboard": uneditable_dashboard,
}


def exclusions() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = yaml.safe_load(LINT.read_text())["exclusions"]
    return data


def _excludes(entry: dict[str, Any], finding: Finding) -> bool:
    """As the linter matches an exclusion: each key it has must equal the finding's."""
    return (
        entry.get("dashboard", finding.dashboard) == finding.dashboard
        and entry.get("panel", finding.panel) == finding.panel
        and int(entry.get("targetIdx", finding.target or 0)) == (finding.target or 0)
    )


@pytest.mark.parametrize("rule", LINT_RULES)
def test_dashboard_linter_rule(rule: str) -> None:
    """What the rule finds in the dashboards is what .lint excludes for it, with a reason, and
    no exclusion is left over."""
    found = {finding for path in DASHBOARDS for finding in LINT_RULES[rule](board(path))}
    excluded = exclusions().get(rule, {})
    entries = excluded.get("entries", [])
    assert not excluded or len(excluded["reason"]) > 40, "an exclusion says why"
    assert [f for f in found if not any(_excludes(e, f) for e in entries)] == []
    assert [e for e in entries if not any(_excludes(e, f) for f in found)] == []


def test_the_lint_exclusions_name_known_rules() -> None:
    assert set(exclusions()) <= set(LINT_RULES)


def _bounded(node: Any) -> bool:
    """Whether an expression's answer is bounded by the sources, not the jobs: an aggregation
    not by job_id, a topk/bottomk, or built only from such (an `and` needs one side)."""
    if isinstance(node, promql_parser.AggregateExpr):
        labels = node.modifier.labels if node.modifier is not None else []
        top = str(node.op) in {"topk", "bottomk"}
        return top or "job_id" not in labels or _bounded(node.expr)
    if isinstance(node, promql_parser.BinaryExpr):
        sides = [_bounded(node.lhs), _bounded(node.rhs)]
        return any(sides) if str(node.op) == "and" else all(sides)
    if isinstance(node, promql_parser.Call):  # time() has no arguments: a scalar
        return all(_bounded(a) for a in node.args if not isinstance(a, promql_parser.StringLiteral))
    if isinstance(node, promql_parser.ParenExpr):
        return _bounded(node.expr)
    return isinstance(node, promql_parser.NumberLiteral)


def test_the_overview_is_bounded_at_any_number_of_jobs() -> None:
    """Every Overview query aggregates per source or lists a top few; no job_id choice; what
    would join every job's series comes from a recording rule. Measured in
    test_e2e_overview_scale.py."""
    data = board(OVERVIEW)
    assert "job_id" not in {v["name"] for v in data["templating"]["list"]}
    assert "$job_id" not in OVERVIEW.read_text()
    recorded = set(recording_rules())
    used: set[str] = set()
    for t in targets(data):
        assert _bounded(promql_parser.parse(_lintable(t.expr))), (t.where, t.expr)
        used |= names(_lintable(t.expr))[0] & recorded
        assert "asyncjob_state{" not in t.expr, (t.where, "read the recorded states")
    assert used == recorded
    for _, selector, _ in variable_queries(data):
        assert names(_lintable(selector))[0] <= {"asyncjob_build_info", "asyncjob_tracked_jobs"}


def test_tables_link_each_job_to_its_dashboard() -> None:
    job = board(REPO / "grafana" / "dashboards" / "asyncjob-job.json")
    job_variables = {v["name"] for v in job["templating"]["list"]}
    linked = 0
    for panel in panels(board(OVERVIEW)):
        for override in panel["fieldConfig"]["overrides"]:
            for prop in override["properties"]:
                if prop["id"] != "links":
                    continue
                (link,) = prop["value"]
                assert link["url"].startswith(f"/d/{job['uid']}/"), link
                assert set(re.findall(r"var-(\w+)=", link["url"])) <= job_variables
                for part in (
                    "${job:queryparam}",
                    "var-source=${__data.fields.source}",
                    "var-job_id=",
                ):
                    assert part in link["url"], link
                linked += 1
    assert linked == 3


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
    """What dashboards and rules ask for is in the exporter's output, Prometheus's own, or a
    recording rule's (whose own expression is checked too)."""
    h = make_harness(at=1000.0)
    h.sim.set_fault("batch-ok", Fault(status=404))  # so the failing-poll series exist too
    h.exporter.poll_once()
    m = h.scrape()
    exposed_metrics = {name for name, _ in m.samples}
    exposed_labels = {label for _, labels in m.samples for label, _ in labels}
    recorded = recording_rules()
    prometheus_own = (  # added by Prometheus to every target, and every scraped series
        {"up", "scrape_duration_seconds", "scrape_samples_scraped", *recorded},
        {"job", "instance"},
    )
    queries = dashboard_queries() + rule_expressions()
    queries += [Query(f"recording rule {name}", expr) for name, expr in recorded.items()]
    for query in queries:
        metrics, labels = names(query.expr)
        assert metrics <= exposed_metrics | prometheus_own[0], (
            query.where,
            metrics - exposed_metrics,
        )
        assert labels <= exposed_labels | prometheus_own[1], (query.where, labels - exposed_labels)
        if query.label:
            assert query.label in exposed_labels | prometheus_own[1], query.where


def test_promtool_accepts_every_dashboard_query(tmp_path: Path) -> None:
    """A rule file with one recording rule per dashboard query passes `promtool check rules`."""
    queries = dashboard_queries()
    rules = [{"record": f"dashboard:query_{i}", "expr": q.expr} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run_tool("promtool", "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_recording_rules_pass_promtool_and_use_the_selector() -> None:
    """`promtool check rules`, and `promtool test rules` with the unit tests beside the alert
    rules' own; every selector in them carries the configured selector."""
    rules = recording_rules()
    result = run_tool("promtool", "check", "rules", str(RECORDING_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
    tests = sorted(str(p) for p in RECORDING_TESTS.glob("*.yaml"))
    assert tests
    result = run_tool("promtool", "test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        check["expr"].split("{")[0]
        for path in RECORDING_TESTS.glob("*.yaml")
        for case in yaml.safe_load(path.read_text())["tests"]
        for check in case["promql_expr_test"]
    }
    assert tested == set(rules)
    for name, expr in rules.items():
        for node, _ in walk(expr):
            if isinstance(node, promql_parser.VectorSelector):
                assert SELECTOR in str(node.matchers), (name, str(node))
