"""Generate the Grafana dashboards in grafana/dashboards/ from one description.

    python grafana/generate.py          # rewrite the JSON files
    python grafana/generate.py --check  # exit 1 if the committed JSON differs from the output

The JSON is committed (Grafana provisions it as is); tests/test_dashboards.py fails when it and
this generator disagree. Every panel and target uses the `datasource` variable; every selector
is filtered by the `job`, `provider`, `source` and `job_id` variables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards"
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", provider=~"$provider", source=~"$source", job_id=~"$job_id"'
SOURCE_SEL = 'job=~"$job", provider=~"$provider", source=~"$source"'
PRICE_VARIABLE = "price_per_million_characters"
STAT_OPTIONS = {"reduceOptions": {"calcs": ["lastNotNull"]}, "graphMode": "none"}

# asyncjob_state as one number per job, for value mappings (state timeline, table, stat).
STATES = [
    ("not_started", "Not started", "text"),
    ("running", "Running", "blue"),
    ("cancelling", "Cancelling", "orange"),
    ("succeeded", "Succeeded", "green"),
    ("partially_succeeded", "Partially succeeded", "orange"),
    ("failed", "Failed", "red"),
    ("cancelled", "Cancelled", "purple"),
    ("unknown", "Unknown", "purple"),
]


def state_code(by: str) -> str:
    weighted = "\n  or ".join(
        f'{code} * asyncjob_state{{state="{state}", {SEL}}}'
        for code, (state, _, _) in enumerate(STATES, start=1)
    )
    return f"sum by ({by}) (\n  {weighted}\n)"


STATE_MAPPINGS = [
    {
        "type": "value",
        "options": {
            str(code): {"text": text, "color": colour, "index": code - 1}
            for code, (_, text, colour) in enumerate(STATES, start=1)
        },
    }
]
UP_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "failing", "color": "red", "index": 0},
            "1": {"text": "ok", "color": "green", "index": 1},
        },
    }
]


def target(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, table: bool = False
) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "instant": instant or table,
        "range": not (instant or table),
        "format": "table" if table else "time_series",
    }


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping rows."""

    def __init__(self) -> None:
        self.x = self.y = self.row_height = 0
        self.next_id = 1

    def panel(
        self,
        kind: str,
        title: str,
        description: str,
        unit: str,
        targets: list[dict[str, Any]],
        size: tuple[int, int],
        **extra: Any,
    ) -> dict[str, Any]:
        width, height = size
        if self.x + width > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        panel: dict[str, Any] = {
            "id": self.next_id,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DATASOURCE,
            "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {
                "defaults": {"unit": unit, **extra.pop("defaults", {})},
                "overrides": extra.pop("overrides", []),
            },
            "options": extra.pop("options", {}),
            "targets": targets,
            **extra,
        }
        self.next_id += 1
        self.x += width
        self.row_height = max(self.row_height, height)
        return panel


def variables(*, single_job: bool = False) -> list[dict[str, Any]]:
    def query(name: str, label: str, definition: str) -> dict[str, Any]:
        multi = not (single_job and name == "job_id")
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": definition,
            "query": {"query": definition, "refId": f"{name}-variable"},
            "refresh": 2,
            "sort": 1,
            "multi": multi,
            "includeAll": multi,
            "allValue": ".+",
            "current": {},
            "options": [],
            "hide": 0,
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "options": [],
            "refresh": 1,
            "hide": 0,
        },
        query("job", "Scrape job", "label_values(asyncjob_build_info, job)"),
        query("provider", "Provider", 'label_values(asyncjob_up{job=~"$job"}, provider)'),
        query(
            "source",
            "Source",
            'label_values(asyncjob_up{job=~"$job", provider=~"$provider"}, source)',
        ),
        query(
            "job_id",
            "Job ID",
            'label_values(asyncjob_up{job=~"$job", provider=~"$provider", source=~"$source"}, job_id)',
        ),
    ]


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[dict[str, Any]],
    extra_vars: list[dict[str, Any]],
    *,
    single_job: bool = False,
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["asyncjob-exporter"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "timezone": "utc",
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "annotations": {"list": []},
        "links": [
            {
                "title": "asyncjob dashboards",
                "type": "dashboards",
                "tags": ["asyncjob-exporter"],
                "asDropdown": True,
            }
        ],
        "templating": {"list": variables(single_job=single_job) + extra_vars},
        "panels": panels,
    }


def overview() -> dict[str, Any]:
    lay = Layout()
    by_job = "provider, source, job_id"
    panels = [
        lay.panel(
            "stat", "Jobs by state",
            "How many of the selected jobs are in each canonical state now.",
            "none", [target(f"sum by (state) (asyncjob_state{{{SEL}}})", "{{state}}", instant=True)], (24, 4),
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "textMode": "value_and_name", "graphMode": "none"},
            overrides=[
                {"matcher": {"id": "byName", "options": state},
                 "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": colour}}]}
                for state, _, colour in STATES
            ],
        ),
        lay.panel(
            "bargauge", "Progress per job",
            "Overall progress of each job, 0-100%, as its API reports it (1 once succeeded).",
            "percentunit",
            [target(f'max by (source, job_id) (asyncjob_progress_ratio{{phase="overall", {SEL}}})', "{{source}} / {{job_id}}", instant=True)],
            (12, 10),
            defaults={"min": 0, "max": 1, "thresholds": {"mode": "absolute", "steps": [{"color": "blue", "value": None}, {"color": "green", "value": 1}]}},
            options={"displayMode": "gradient", "orientation": "horizontal", "reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        lay.panel(
            "state-timeline", "State history",
            "Each job's canonical state over time. Gaps are times the exporter had not polled the job successfully yet.",
            "none", [target(state_code("source, job_id"), "{{source}} / {{job_id}}")], (12, 10),
            defaults={"mappings": STATE_MAPPINGS, "color": {"mode": "thresholds"}},
            options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
        ),
        lay.panel(
            "table", "Jobs",
            "Every selected job: state, progress, the API's estimated completion, age (since the API created it) and whether the latest poll succeeded.",
            "none",
            [
                target(state_code(by_job), ref="A", table=True),
                target(f'max by ({by_job}) (asyncjob_progress_ratio{{phase="overall", {SEL}}})', ref="B", table=True),
                target(f"max by ({by_job}) (asyncjob_estimated_completion_timestamp_seconds{{{SEL}}}) * 1000", ref="C", table=True),
                target(f"max by ({by_job}) (time() - asyncjob_created_timestamp_seconds{{{SEL}}})", ref="D", table=True),
                target(f"max by ({by_job}) (asyncjob_up{{{SEL}}})", ref="E", table=True),
            ],
            (24, 10),
            transformations=[
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value #A": "State", "Value #B": "Progress", "Value #C": "ETA",
                                     "Value #D": "Age", "Value #E": "Last poll", "job_id": "Job ID",
                                     "source": "Source", "provider": "Provider"},
                }},
            ],
            overrides=[
                {"matcher": {"id": "byName", "options": "State"}, "properties": [
                    {"id": "mappings", "value": STATE_MAPPINGS},
                    {"id": "custom.cellOptions", "value": {"type": "color-background"}}]},
                {"matcher": {"id": "byName", "options": "Progress"}, "properties": [
                    {"id": "unit", "value": "percentunit"}, {"id": "min", "value": 0}, {"id": "max", "value": 1},
                    {"id": "custom.cellOptions", "value": {"type": "gauge", "mode": "basic"}}]},
                {"matcher": {"id": "byName", "options": "ETA"}, "properties": [{"id": "unit", "value": "dateTimeAsIso"}]},
                {"matcher": {"id": "byName", "options": "Age"}, "properties": [{"id": "unit", "value": "s"}]},
                {"matcher": {"id": "byName", "options": "Last poll"}, "properties": [
                    {"id": "mappings", "value": UP_MAPPINGS},
                    {"id": "custom.cellOptions", "value": {"type": "color-text"}}]},
            ],
            options={"showHeader": True, "sortBy": [{"displayName": "State", "desc": True}]},
        ),
        lay.panel(
            "timeseries", "Failed tasks and documents",
            "Tasks (analyze jobs) and documents (translation batches) the API reports as failed.",
            "none",
            [
                target(f'sum by (source, job_id) (asyncjob_tasks{{state="failed", {SEL}}})', "tasks {{source}} / {{job_id}}", "A"),
                target(f'sum by (source, job_id) (asyncjob_documents{{state="failed", {SEL}}})', "documents {{source}} / {{job_id}}", "B"),
            ],
            (12, 8),
        ),
        lay.panel(
            "stat", "Characters charged (time range)",
            "Characters the Translator API charged for the batches seen in the time range (each batch's highest value).",
            "short", [target(f"sum(max_over_time(asyncjob_translation_characters_charged_total{{{SEL}}}[$__range]))", "characters", instant=True)],
            (6, 8), defaults={"decimals": 0}, options=STAT_OPTIONS,
        ),
        lay.panel(
            "stat", "Estimated translation cost (time range)",
            f"Characters charged in the time range times the dashboard constant ${PRICE_VARIABLE} (USD per million characters). Set it to your price tier.",
            "currencyUSD",
            [target(f"sum(max_over_time(asyncjob_translation_characters_charged_total{{{SEL}}}[$__range])) / 1e6 * ${PRICE_VARIABLE}", "cost", instant=True)],
            (6, 8), defaults={"decimals": 2}, options=STAT_OPTIONS,
        ),
        lay.panel(
            "stat", "Failed share of finished jobs (time range)",
            "Of each source's jobs that finished in the time range, the share that failed (asyncjob_jobs_finished_total, kept across exporter restarts). AsyncJobFailureRatioHigh fires above 25% over 6 hours.",
            "percentunit",
            [target(f'sum by (source) (increase(asyncjob_jobs_finished_total{{state="failed", {SOURCE_SEL}}}[$__range])) / sum by (source) (increase(asyncjob_jobs_finished_total{{{SOURCE_SEL}}}[$__range]))', "{{source}}", instant=True)],
            (12, 8), defaults={"min": 0, "max": 1, "decimals": 0}, options=STAT_OPTIONS,
        ),
        lay.panel(
            "bargauge", "Job duration, p50 and p90 (time range)",
            "How long the jobs that finished in the time range took, created to finished, from the API's timestamps (asyncjob_job_duration_seconds), by source and final state.",
            "s",
            [
                target(f"histogram_quantile(0.5, sum by (le, source, state) (increase(asyncjob_job_duration_seconds_bucket{{{SOURCE_SEL}}}[$__range])))", "p50 {{source}} {{state}}", "A", instant=True),
                target(f"histogram_quantile(0.9, sum by (le, source, state) (increase(asyncjob_job_duration_seconds_bucket{{{SOURCE_SEL}}}[$__range])))", "p90 {{source}} {{state}}", "B", instant=True),
            ],
            (12, 8),
        ),
        lay.panel(
            "timeseries", "Upstream request rate",
            "HTTP requests the exporter sends to each source's API, retries included.",
            "reqps", [target(f"sum by (source) (rate(asyncjob_requests_total{{{SOURCE_SEL}}}[$__rate_interval]))", "{{source}}")], (8, 8),
        ),
        lay.panel(
            "timeseries", "Upstream errors by reason",
            "Failed upstream requests per second, by source and reason (auth, not_found, throttled, timeout, connection, server_error, client_error, bad_response).",
            "reqps", [target(f"sum by (source, reason) (rate(asyncjob_request_errors_total{{{SOURCE_SEL}}}[$__rate_interval]))", "{{source}} {{reason}}")], (8, 8),
        ),
        lay.panel(
            "timeseries", "Upstream latency",
            "Median and 99th percentile of upstream request latency per source, from asyncjob_request_duration_seconds.",
            "s",
            [
                target(f"histogram_quantile(0.5, sum by (source, le) (rate(asyncjob_request_duration_seconds_bucket{{{SOURCE_SEL}}}[$__rate_interval])))", "p50 {{source}}", "A"),
                target(f"histogram_quantile(0.99, sum by (source, le) (rate(asyncjob_request_duration_seconds_bucket{{{SOURCE_SEL}}}[$__rate_interval])))", "p99 {{source}}", "B"),
            ],
            (8, 8),
        ),
    ]  # fmt: skip
    price = {
        "name": PRICE_VARIABLE,
        "label": "Price per million characters (USD)",
        "type": "constant",
        "query": "15",
        "hide": 2,
    }
    return dashboard(
        "asyncjob-overview",
        "asyncjob-exporter / Overview",
        "Every long-running AI job the exporter watches: states, progress, failures, translation cost and upstream health.",
        panels,
        [price],
    )


def job_detail() -> dict[str, Any]:
    lay = Layout()
    overall = f'asyncjob_progress_ratio{{phase="overall", {SEL}}}'
    panels = [
        lay.panel(
            "stat", "State", "The job's canonical state now.",
            "none", [target(state_code("job_id"), "{{job_id}}", instant=True)], (6, 5),
            defaults={"mappings": STATE_MAPPINGS, "color": {"mode": "thresholds"}},
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background", "graphMode": "none"},
        ),
        lay.panel(
            "stat", "Projected completion (API estimate)",
            "When the API expects the job to finish (training jobs, Stable Diffusion fine-tunes).",
            "dateTimeAsIso", [target(f"max by (job_id) (asyncjob_estimated_completion_timestamp_seconds{{{SEL}}}) * 1000", "{{job_id}}", instant=True)],
            (6, 5), options=STAT_OPTIONS,
        ),
        lay.panel(
            "stat", "Projected completion (observed rate)",
            "When the job would finish if it kept the progress rate of the last 30 minutes; empty while it is not moving.",
            "dateTimeAsIso",
            [target(f"max by (job_id) (time() + (1 - {overall}) / (deriv({overall}[30m]) > 0)) * 1000", "{{job_id}}", instant=True)],
            (6, 5), options=STAT_OPTIONS,
        ),
        lay.panel(
            "stat", "Characters charged",
            "Characters the Translator API has charged for the batch so far.",
            "short", [target(f"max by (job_id) (asyncjob_translation_characters_charged_total{{{SEL}}})", "{{job_id}}", instant=True)],
            (6, 5), defaults={"decimals": 0}, options=STAT_OPTIONS,
        ),
        lay.panel(
            "timeseries", "Progress by phase",
            "Progress over time: overall, and training / evaluation for training jobs.",
            "percentunit", [target(f"max by (job_id, phase) (asyncjob_progress_ratio{{{SEL}}})", "{{job_id}} {{phase}}")], (24, 9),
            defaults={"min": 0, "max": 1},
        ),
        lay.panel(
            "timeseries", "Tasks and documents",
            "Tasks (analyze jobs) or documents (translation batches) by state.",
            "none",
            [
                target(f"sum by (job_id, state) (asyncjob_tasks{{{SEL}}})", "tasks {{state}}", "A"),
                target(f"sum by (job_id, state) (asyncjob_documents{{{SEL}}})", "documents {{state}}", "B"),
            ],
            (12, 8), defaults={"custom": {"stacking": {"mode": "normal"}, "drawStyle": "bars", "fillOpacity": 80}},
        ),
        lay.panel(
            "timeseries", "Errors and warnings",
            "Errors and warnings the API reports for the job.",
            "none",
            [
                target(f"max by (job_id) (asyncjob_errors{{{SEL}}})", "errors {{job_id}}", "A"),
                target(f"max by (job_id) (asyncjob_warnings{{{SEL}}})", "warnings {{job_id}}", "B"),
            ],
            (12, 8),
        ),
        lay.panel(
            "state-timeline", "Poll health",
            "Whether the exporter's latest poll of the job succeeded, over time.",
            "none", [target(f"max by (job_id) (asyncjob_up{{{SEL}}})", "{{job_id}}")], (12, 6),
            defaults={"mappings": UP_MAPPINGS, "color": {"mode": "thresholds"}},
            options={"showValue": "never", "mergeValues": True},
        ),
        lay.panel(
            "timeseries", "Time since last successful poll",
            "Seconds since the exporter last polled the job successfully; it grows while polls fail.",
            "s", [target(f"max by (job_id) (time() - asyncjob_last_poll_success_timestamp_seconds{{{SEL}}})", "{{job_id}}")], (12, 6),
        ),
        lay.panel(
            "table", "Failing polls",
            "Jobs whose latest poll failed, with the reason (asyncjob_last_poll_error_info).",
            "none", [target(f"max by (source, job_id, reason) (asyncjob_last_poll_error_info{{{SEL}}})", table=True)], (24, 6),
            transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True},
                                                             "renameByName": {"job_id": "Job ID", "source": "Source", "reason": "Reason"}}}],
        ),
    ]  # fmt: skip
    return dashboard(
        "asyncjob-job",
        "asyncjob-exporter / Job",
        "One job in depth: progress per phase, projected completion, task and document breakdown, errors and poll health.",
        panels,
        [],
        single_job=True,
    )


DASHBOARDS = {"asyncjob-overview.json": overview, "asyncjob-job.json": job_detail}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for name, build in DASHBOARDS.items():
        path = OUT / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
