"""Reading the PromQL out of the dashboards and rules, with Grafana's variables substituted."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import promql_parser
import yaml
from conftest import REPO

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
OVERVIEW = REPO / "grafana" / "dashboards" / "asyncjob-overview.json"
RULES = REPO / "alerting" / "rules" / "asyncjob-alerts.yaml"
RECORDING_RULES = REPO / "alerting" / "rules" / "asyncjob-recording.yaml"
# What Grafana puts in place of its variables: every job ("All" = allValue .+), and windows long
# enough for a 1 s scrape interval.
GRAFANA_VALUES = {
    "$__rate_interval": "1m",
    "$__interval": "1h",
    "$__range": "1h",
    "$job_id": ".+",  # before $job, which it starts with
    "$job": ".+",
    "$instance": ".+",
    "$provider": ".+",
    "$source": ".+",
    "$price_per_million_characters": "15",
}
_LABEL_VALUES = re.compile(r"^label_values\((.*),\s*([a-zA-Z_]+)\)$", re.DOTALL)


@dataclass(frozen=True)
class Query:
    where: str  # "asyncjob-overview.json: panel 'Jobs' target B"
    expr: str  # substituted, ready for Prometheus
    label: str | None = None  # for label_values(): the label whose values the variable lists


@dataclass(frozen=True)
class Target:
    """One panel query as the dashboard JSON has it, with what Grafana needs to run it."""

    board: dict[str, Any]
    panel: dict[str, Any]
    index: int  # its position in the panel's targets (dashboard-linter's targetIdx)
    expr: str  # as written, variables and all

    @property
    def where(self) -> str:
        return f"{self.board['uid']}: panel {self.panel['title']!r} target {self.panel['targets'][self.index]['refId']}"

    @property
    def instant(self) -> bool:
        return bool(self.panel["targets"][self.index]["instant"])


def board(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that query (rows only group them)."""
    return [p for p in data["panels"] if p["type"] != "row"]


def targets(data: dict[str, Any]) -> list[Target]:
    return [
        Target(data, panel, i, t["expr"])
        for panel in panels(data)
        for i, t in enumerate(panel["targets"])
    ]


def variable_queries(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(variable name, selector expression, label) of every label_values() variable."""
    found = []
    for variable in data["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["definition"])
        assert match, variable["definition"]
        found.append((variable["name"], match[1], match[2]))
    return found


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    for name, value in (values or GRAFANA_VALUES).items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def dashboard_queries() -> list[Query]:
    queries = []
    for path in DASHBOARDS:
        data = board(path)
        queries += [
            Query(f"{path.name}: variable {name}", substitute(selector), label)
            for name, selector, label in variable_queries(data)
        ]
        queries += [Query(f"{path.name}: {t.where}", substitute(t.expr)) for t in targets(data)]
    return queries


def rule_expressions() -> list[Query]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [
        Query(f"rule {rule['alert']}", rule["expr"]) for group in groups for rule in group["rules"]
    ]


def recording_rules() -> dict[str, str]:
    """The recording rules the dashboards read: name -> expression."""
    groups = yaml.safe_load(RECORDING_RULES.read_text())["groups"]
    return {rule["record"]: rule["expr"] for group in groups for rule in group["rules"]}


def _children(node: Any) -> list[Any]:
    """The sub-expressions of a node, whatever its type."""
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, promql_parser.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, promql_parser.Call):
        return list(node.args)
    return [node.expr] if hasattr(node, "expr") else []  # ParenExpr, UnaryExpr, SubqueryExpr


def walk(expr: str) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Every node of an expression with its ancestors, the nearest last (as the linter walks)."""
    pending: list[tuple[Any, tuple[Any, ...]]] = [(promql_parser.parse(expr), ())]
    while pending:
        node, parents = pending.pop()
        yield node, parents
        pending.extend((child, (*parents, node)) for child in _children(node))


def _labels(node: Any) -> list[str]:
    """Label names a node itself names: matchers, by/without, on/ignoring, group_left/right."""
    if isinstance(node, promql_parser.VectorSelector):
        return [m.name for m in node.matchers.matchers]
    if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
        return list(node.modifier.labels)
    if isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
        matching = node.modifier.matching
        return [*(matching.labels if matching else []), *(node.modifier.group_labels or [])]
    return []


def names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and label names an expression refers to."""
    metrics: set[str] = set()
    labels: set[str] = set()
    for node, _ in walk(expr):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            metrics.add(node.name)
        labels.update(_labels(node))
    return metrics, labels


def nodes(expr: str) -> list[Any]:
    """Every node of an expression, the root first."""
    found: list[Any] = []
    pending = [promql_parser.parse(expr)]
    while pending:
        node = pending.pop()
        found.append(node)
        pending.extend(_children(node))
    return found


@dataclass(frozen=True)
class Consumer:
    """What reads the metrics: a dashboard's panel or variable, an alert, a recording rule."""

    board: str  # the dashboard's own part of its title ("Overview"); "" for a rule
    name: str  # the panel's title, "$" and the variable's name, the alert's or the rule's name
    exprs: tuple[str, ...]  # its queries, variables substituted
    variable: bool = False


def consumers() -> list[Consumer]:
    """Every panel and variable of the dashboards, every alert and recording rule."""
    found = []
    for path in DASHBOARDS:
        data = board(path)
        title = data["title"].split(" / ")[-1]
        found += [
            Consumer(title, f"${name}", (substitute(selector),), variable=True)
            for name, selector, _ in variable_queries(data)
        ]
        found += [
            Consumer(title, panel["title"], tuple(substitute(t["expr"]) for t in panel["targets"]))
            for panel in panels(data)
        ]
    found += [Consumer("", q.where.removeprefix("rule "), (q.expr,)) for q in rule_expressions()]
    found += [Consumer("", name, (expr,)) for name, expr in recording_rules().items()]
    return found


def metrics_read(expr: str) -> set[str]:
    """The metric names an expression reads, through the recording rules it reads."""
    rules = recording_rules()
    found: set[str] = set()
    for name in names(expr)[0]:
        found |= metrics_read(rules[name]) if name in rules else {name}
    return found


def answers_without(expr: str, missing: Callable[[str], bool]) -> bool:
    """Whether an expression can still answer when the metrics `missing` names are absent:
    `a unless b` needs only a, `a or b` either; anything else needs all it reads."""
    rules = recording_rules()

    def answers(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or ""
            return answers(promql_parser.parse(rules[name])) if name in rules else not missing(name)
        if isinstance(node, promql_parser.BinaryExpr) and str(node.op) in {"unless", "or"}:
            left, right = answers(node.lhs), answers(node.rhs)
            return left if str(node.op) == "unless" else left or right
        return all(answers(child) for child in _children(node))

    return answers(promql_parser.parse(expr))
