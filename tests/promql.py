"""Reading the PromQL out of the dashboards and rules, with Grafana's variables substituted."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import promql_parser
import yaml
from conftest import REPO

DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
RULES = REPO / "alerting" / "rules" / "asyncjob-alerts.yaml"
# What Grafana puts in place of its variables: every job ("All" = allValue .+), and windows long
# enough for a 1 s scrape interval.
GRAFANA_VALUES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$job_id": ".+",
    "$job": ".+",
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


def substitute(expr: str) -> str:
    for name, value in GRAFANA_VALUES.items():  # longest names first where they share a prefix
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def dashboard_queries() -> list[Query]:
    queries = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = _LABEL_VALUES.match(variable["definition"])
            assert match, variable["definition"]
            queries.append(
                Query(f"{path.name}: variable {variable['name']}", substitute(match[1]), match[2])
            )
        queries.extend(
            Query(
                f"{path.name}: panel {panel['title']!r} target {t['refId']}", substitute(t["expr"])
            )
            for panel in board["panels"]
            for t in panel["targets"]
        )
    return queries


def rule_expressions() -> list[Query]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [
        Query(f"rule {rule['alert']}", rule["expr"]) for group in groups for rule in group["rules"]
    ]


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
    pending = [promql_parser.parse(expr)]
    while pending:
        node = pending.pop()
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            metrics.add(node.name)
        labels.update(_labels(node))
        pending.extend(_children(node))
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
