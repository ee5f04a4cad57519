"""Generate the Grafana dashboards and the Overview's recording rules from one description.

    python grafana/generate.py          # rewrite grafana/dashboards/*.json and the rules
    python grafana/generate.py --check  # exit 1 if a committed file differs from the output

Writes grafana/dashboards/asyncjob-overview.json, grafana/dashboards/asyncjob-job.json and
alerting/rules/asyncjob-recording.yaml. The scrape-job selector comes from monitoring.yaml (at
the repository root), which the alert rules and the Kubernetes component read too.

The files are committed (Grafana and Prometheus load them as they are); tests/test_dashboards.py
fails when they and this generator disagree, and checks grafana/dashboard-linter's rules. The
states, their colours and words, and which states are unfinished or unsuccessful come from the
vocabulary (exporter/model.py), as on the status page.

At 10,000 jobs the Overview must stay cheap: every query aggregates per source (never per
instance, so a sharded exporter adds up the same), or lists at most a few jobs with topk, and
what would join every job's series on each refresh is read from a recording rule instead. The
`job_id` choice is on the Job dashboard only. Every selector carries the `job` and `instance`
variables; the metrics any target has (`up`, `scrape_*`, `process_*`) carry the configured
selector too, since `job=~".+"` alone would match every target Prometheus scrapes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from exporter.model import (
    STATE_COLOURS,
    TERMINAL_STATES,
    UNFINISHED_STATES,
    UNSUCCESSFUL_STATES,
    State,
    state_words,
)

if TYPE_CHECKING:
    from collections.abc import Collection

REPO = Path(__file__).resolve().parent.parent
SETTINGS = REPO / "monitoring.yaml"
OUT = Path(__file__).parent / "dashboards"
RECORDING_RULES = REPO / "alerting" / "rules" / "asyncjob-recording.yaml"
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _selector() -> str:
    settings: dict[str, str] = yaml.safe_load(SETTINGS.read_text(encoding="utf-8"))
    return settings["selector"]


SELECTOR = _selector()  # the matcher that picks the scrape jobs of this exporter
SCRAPE = 'job=~"$job", instance=~"$instance"'
SOURCE_SEL = f'{SCRAPE}, provider=~"$provider", source=~"$source"'
SEL = f'{SOURCE_SEL}, job_id=~"$job_id"'  # the Job dashboard's selected job
OWN = f"{SELECTOR}, {SCRAPE}"  # for up, scrape_* and process_*: any target has them
JOB_KEY = "job, instance, provider, source, job_id"  # one job's series, whatever the metric
PRICE_VARIABLE = "price_per_million_characters"
STAT_OPTIONS = {"reduceOptions": {"calcs": ["lastNotNull"]}, "graphMode": "none"}
LIST_LENGTH = 10  # jobs in each Overview list: the ones that need attention, never all


def _states(states: Collection[State]) -> str:
    """States as a regex alternation, in the vocabulary's order."""
    return "|".join(state.value for state in State if state in states)


def _words(states: Collection[State]) -> str:
    """States as a person reads them: "failed, partially succeeded or cancelled"."""
    *most, last = [state_words(state) for state in State if state in states]
    return f"{', '.join(most)} or {last}" if most else last


UNFINISHED = _states(UNFINISHED_STATES)
FINISHED = _states(TERMINAL_STATES)
UNSUCCESSFUL = _states(UNSUCCESSFUL_STATES)


def in_state(states: str, sel: str) -> str:
    """The jobs whose state is one of `states`, as 1 with the `state` label."""
    return f'(asyncjob_state{{{sel}, state=~"{states}"}} == 1)'


# Recording rules: (name, expression, why). Each keeps `job` and `instance`, so the panels
# filter by them like any other series, and aggregate across shards.
STATE_COUNT = "source_state:asyncjob_state:sum"
UNFINISHED_CREATED = "job_id:asyncjob_created_timestamp_seconds:unfinished"
UNSUCCESSFUL_FINISHED = "job_id:asyncjob_finished_timestamp_seconds:unsuccessful"
RULES = [
    (
        STATE_COUNT,
        f"sum by (job, instance, provider, source, state) (asyncjob_state{{{SELECTOR}}})",
        f"Jobs in each state, per source: {len(State)} series per job summed to a handful.",
    ),
    (
        UNFINISHED_CREATED,
        (
            f"asyncjob_created_timestamp_seconds{{{SELECTOR}}}\n"
            f"  * on ({JOB_KEY}) group_left (state)\n"
            f"  {in_state(UNFINISHED, SELECTOR)}"
        ),
        "When each unfinished job was created, with its state: the longest-running jobs.",
    ),
    (
        UNSUCCESSFUL_FINISHED,
        (
            f"asyncjob_finished_timestamp_seconds{{{SELECTOR}}}\n"
            f"  * on ({JOB_KEY}) group_left (state)\n"
            f"  {in_state(UNSUCCESSFUL, SELECTOR)}"
        ),
        f"When each unsuccessful job ({_words(UNSUCCESSFUL_STATES)}) finished.",
    ),
]


def _title(state: State) -> str:
    return state_words(state).capitalize()


# asyncjob_state as one number per job (the Job dashboard's State), and the `state` label's
# values, both mapped to the status page's words and colours.
STATE_MAPPINGS = [
    {
        "type": "value",
        "options": {
            str(code): {"text": _title(state), "color": STATE_COLOURS[state], "index": code - 1}
            for code, state in enumerate(State, start=1)
        },
    }
]
STATE_LABEL_MAPPINGS = [
    {
        "type": "value",
        "options": {
            state.value: {"text": _title(state), "color": STATE_COLOURS[state], "index": i}
            for i, state in enumerate(State)
        },
    }
]
STATE_COLOUR_OVERRIDES = [
    {
        "matcher": {"id": "byName", "options": state.value},
        "properties": [
            {"id": "color", "value": {"mode": "fixed", "fixedColor": STATE_COLOURS[state]}}
        ],
    }
    for state in State
]


def up_mappings(bad: str, good: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                "0": {"text": bad, "color": "red", "index": 0},
                "1": {"text": good, "color": "green", "index": 1},
            },
        }
    ]


def up_timeline(
    lay: Layout,
    title: str,
    description: str,
    expr: str,
    legend: str,
    size: tuple[int, int],
    words: tuple[str, str],
) -> dict[str, Any]:
    """A state timeline of a 0/1 series (up, a reload, a poll), in red and green words."""
    return lay.panel(
        "state-timeline", title, description, "none", [target(expr, legend)], size,
        defaults={"mappings": up_mappings(*words), "color": {"mode": "thresholds"}},
        options={"showValue": "never", "mergeValues": True},
    )  # fmt: skip


def state_code(by: str) -> str:
    weighted = "\n  or ".join(
        f'{code} * asyncjob_state{{state="{state.value}", {SEL}}}'
        for code, state in enumerate(State, start=1)
    )
    return f"sum by ({by}) (\n  {weighted}\n)"


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


def job_link(column: str) -> dict[str, Any]:
    """An override that makes a table's job ID column open that job's dashboard."""
    url = (
        "/d/asyncjob-job/asyncjob-exporter-job?${__url_time_range}&${datasource:queryparam}"
        "&${job:queryparam}&var-source=${__data.fields.source}&var-job_id=${__value.raw}"
    )
    return {
        "matcher": {"id": "byName", "options": column},
        "properties": [
            {"id": "links", "value": [{"title": "Open the job's dashboard", "url": url}]}
        ],
    }


def columns(rename: dict[str, str], *, hide: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A table's transformations: one row per job from the targets, labels renamed."""
    hidden = dict.fromkeys(("Time", "__name__", "job", "instance", *hide), True)
    return [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": hidden, "renameByName": rename}},
    ]


STATE_COLUMN: list[dict[str, Any]] = [
    {"id": "mappings", "value": STATE_LABEL_MAPPINGS},
    {"id": "custom.cellOptions", "value": {"type": "color-text"}},
]


def job_list(
    lay: Layout,
    title: str,
    description: str,
    queries: list[str],
    size: tuple[int, int],
    shown: dict[str, tuple[str, list[dict[str, Any]]]],
    *,
    sort: str,
) -> dict[str, Any]:
    """A table of a few jobs, one row each, whose job ID opens the Job dashboard: provider,
    source and job ID, then `shown` (a label, or "Value"/"Value #A".. for the queries' values,
    -> its column's name and field properties), sorted by the column `sort`, descending."""
    rename = {"provider": "Provider", "source": "Source", "job_id": "Job ID"}
    rename |= {field: name for field, (name, _) in shown.items()}
    overrides = [job_link("Job ID")] + [
        {"matcher": {"id": "byName", "options": name}, "properties": properties}
        for name, properties in shown.values()
        if properties
    ]
    targets = [target(q, ref=chr(ord("A") + i), table=True) for i, q in enumerate(queries)]
    return lay.panel(
        "table", title, description, "none", targets, size,
        transformations=columns(rename), overrides=overrides,
        options={"showHeader": True, "sortBy": [{"displayName": sort, "desc": True}]},
    )  # fmt: skip


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping rows, under rows."""

    def __init__(self) -> None:
        self.x = self.y = self.row_height = 0
        self.next_id = 1

    def row(self, title: str) -> dict[str, Any]:
        self.x, self.y = 0, self.y + self.row_height
        panel = {
            "id": self.next_id,
            "type": "row",
            "title": title,
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            "panels": [],
        }
        self.next_id += 1
        self.y, self.row_height = self.y + 1, 0
        return panel

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


def variables(*, with_job_id: bool) -> list[dict[str, Any]]:
    """The data source, then job and instance (dashboard-linter's templates), provider and
    source; the Job dashboard adds a single-select job_id. The lists come from per-source and
    per-process series, never from the per-job ones (but job_id's)."""

    def query(name: str, label: str, definition: str, *, multi: bool = True) -> dict[str, Any]:
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

    found = [
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
        query("job", "Job", f"label_values(asyncjob_build_info{{{SELECTOR}}}, job)"),
        query("instance", "Instance", 'label_values(asyncjob_build_info{job=~"$job"}, instance)'),
        query("provider", "Provider", f"label_values(asyncjob_tracked_jobs{{{SCRAPE}}}, provider)"),
        query(
            "source",
            "Source",
            f'label_values(asyncjob_tracked_jobs{{{SCRAPE}, provider=~"$provider"}}, source)',
        ),
    ]
    if with_job_id:
        found.append(
            query(
                "job_id",
                "Job ID",
                f"label_values(asyncjob_up{{{SOURCE_SEL}}}, job_id)",
                multi=False,
            )
        )
    return found


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[dict[str, Any]],
    extra_vars: list[dict[str, Any]],
    *,
    with_job_id: bool = False,
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
        "time": {"from": "now-24h", "to": "now"},
        "refresh": "1m",
        "annotations": {"list": []},
        "links": [
            {
                "title": "asyncjob dashboards",
                "type": "dashboards",
                "tags": ["asyncjob-exporter"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": variables(with_job_id=with_job_id) + extra_vars},
        "panels": panels,
    }


def duration_quantiles(window: str, by: str) -> list[dict[str, Any]]:
    """p50 and p90 of asyncjob_job_duration_seconds over `window`, only where a job finished
    in it: histogram_quantile of empty buckets is NaN, which a panel would show as a value."""
    finished = f"sum by ({by}) (increase(asyncjob_job_duration_seconds_count{{{SOURCE_SEL}}}[{window}])) > 0"
    labels = " ".join(f"{{{{{label.strip()}}}}}" for label in by.split(","))
    return [
        target(
            f"histogram_quantile({q}, sum by (le, {by}) (increase(asyncjob_job_duration_seconds_bucket{{{SOURCE_SEL}}}[{window}])))\n"
            f"and on ({by}) ({finished})",
            f"p{round(q * 100)} {labels}", ref, instant=window == "$__range",
        )
        for q, ref in ((0.5, "A"), (0.9, "B"))
    ]  # fmt: skip


# The Exporter row's time series: one line per exporter process, of what any target has.
PER_PROCESS = [
    ("Scrape duration", "How long Prometheus took to scrape each exporter process's /metrics.",
     "s", f"max by (instance) (scrape_duration_seconds{{{OWN}}})"),
    ("Samples per scrape",
     "Samples in each exporter process's /metrics: it grows with the tracked jobs (about 20 each).",
     "short", f"max by (instance) (scrape_samples_scraped{{{OWN}}})"),
    ("CPU", "CPU time each exporter process uses per second (100% is one core).",
     "percentunit", f"sum by (instance) (rate(process_cpu_seconds_total{{{OWN}}}[$__rate_interval]))"),
    ("Memory", "Resident memory of each exporter process.",
     "bytes", f"max by (instance) (process_resident_memory_bytes{{{OWN}}})"),
]  # fmt: skip


def overview() -> dict[str, Any]:
    lay = Layout()
    source_state = f"{STATE_COUNT}{{{SOURCE_SEL}}}"
    unfinished = f"{UNFINISHED_CREATED}{{{SOURCE_SEL}}}"
    longest = f"topk({LIST_LENGTH}, time() - {unfinished})"
    failing_since = (
        f"(time() - asyncjob_last_poll_success_timestamp_seconds{{{SOURCE_SEL}}})\n"
        f"  * on ({JOB_KEY}) group_left (reason) asyncjob_last_poll_error_info{{{SOURCE_SEL}}}\n"
        # never polled successfully: NaN, which topk ranks last and the table shows as "never"
        f"or on ({JOB_KEY}) asyncjob_last_poll_error_info{{{SOURCE_SEL}}} * NaN"
    )
    charged = f"sum(increase(asyncjob_characters_charged_total{{{SOURCE_SEL}}}[$__range]))"
    finished_total = (
        f"sum by (source) (increase(asyncjob_jobs_finished_total{{{SOURCE_SEL}}}[$__range]))"
    )
    per_day = {"interval": "1d", "timeFrom": "7d"}
    bars = {"custom": {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}}}
    panels = [
        lay.row("Jobs"),
        lay.panel(
            "stat", "Jobs by state",
            "How many of the selected sources' jobs are in each canonical state now.",
            "none", [target(f"sum by (state) ({source_state})", "{{state}}", instant=True)], (24, 4),
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "textMode": "value_and_name", "graphMode": "none"},
            overrides=STATE_COLOUR_OVERRIDES,
        ),
        lay.panel(
            "timeseries", "Jobs by state over time",
            "Tracked jobs in each canonical state, stacked: the total is every job the exporter tracks.",
            "none", [target(f"sum by (state) ({source_state})", "{{state}}")], (8, 8),
            defaults={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 30}},
            overrides=STATE_COLOUR_OVERRIDES,
        ),
        lay.panel(
            "timeseries", "Jobs finished per day, by state",
            "Jobs that reached a terminal state each day (UTC) of the last 7 days, from asyncjob_jobs_finished_total: each job counted once, across exporter restarts.",
            "none", [target(f"sum by (state) (increase(asyncjob_jobs_finished_total{{{SOURCE_SEL}}}[$__interval]))", "{{state}}")],
            (8, 8), defaults=bars, overrides=STATE_COLOUR_OVERRIDES, **per_day,
        ),
        lay.panel(
            "stat", "Failed share of finished jobs (time range)",
            "Of each source's jobs that finished in the time range, the share that failed (asyncjob_jobs_finished_total). Empty for a source where none finished.",
            "percentunit",
            [target(f'sum by (source) (increase(asyncjob_jobs_finished_total{{state="{State.FAILED}", {SOURCE_SEL}}}[$__range]))\n/ ({finished_total} > 0)', "{{source}}", instant=True)],
            (8, 8), defaults={"min": 0, "max": 1, "decimals": 0}, options=STAT_OPTIONS,
        ),
        lay.row("Jobs that need attention"),
        job_list(
            lay, "Longest-running jobs",
            f"The {LIST_LENGTH} unfinished jobs ({_words(UNFINISHED_STATES)}) created longest ago: state, age since creation and overall progress. Click a job ID for its dashboard.",
            [longest, f'max by ({JOB_KEY}) (\n  asyncjob_progress_ratio{{phase="overall", {SOURCE_SEL}}}\n  and on ({JOB_KEY}) {longest}\n)'],
            (12, 9),
            {"state": ("State", STATE_COLUMN), "Value #A": ("Age", [{"id": "unit", "value": "s"}]),
             "Value #B": ("Progress", [{"id": "unit", "value": "percentunit"}, {"id": "min", "value": 0}, {"id": "max", "value": 1},
                                       {"id": "custom.cellOptions", "value": {"type": "gauge", "mode": "basic"}}])},
            sort="Age",
        ),
        job_list(
            lay, "Latest unsuccessful jobs",
            f"The {LIST_LENGTH} jobs that most recently finished {_words(UNSUCCESSFUL_STATES)}, with when they finished (asyncjob_finished_timestamp_seconds). Click a job ID for its dashboard.",
            [f"topk({LIST_LENGTH}, {UNSUCCESSFUL_FINISHED}{{{SOURCE_SEL}}}) * 1000"], (12, 9),
            {"state": ("State", STATE_COLUMN), "Value": ("Finished", [{"id": "unit", "value": "dateTimeAsIso"}])},
            sort="Finished",
        ),
        job_list(
            lay, "Jobs whose polls fail",
            f"The {LIST_LENGTH} jobs whose polls have failed longest, with the latest reason and the time since their last successful poll (never: not once). Click a job ID for its dashboard.",
            [f"topk({LIST_LENGTH},\n  {failing_since}\n)"], (24, 7),
            {"reason": ("Reason", []),
             "Value": ("Since last success", [{"id": "unit", "value": "s"}, {"id": "mappings", "value": [{"type": "special", "options": {"match": "nan", "result": {"text": "never", "index": 0}}}]}])},
            sort="Since last success",
        ),
        lay.row("Durations"),
        lay.panel(
            "bargauge", "Job duration, p50 and p90 (time range)",
            "How long the jobs that finished in the time range took, created to finished, from the API's timestamps (asyncjob_job_duration_seconds), by source and final state. A source and state where nothing finished has no bar.",
            "s", duration_quantiles("$__range", "source, state"), (12, 8),
            options={"displayMode": "gradient", "orientation": "horizontal", "reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        lay.panel(
            "timeseries", "Job duration over time",
            "p50 and p90 of how long the jobs that finished in each hour took, created to finished, by source. Hours in which nothing finished are gaps.",
            "s", duration_quantiles("$__interval", "source"), (12, 8),
            defaults={"custom": {"drawStyle": "points", "pointSize": 6}}, interval="1h",
        ),
        lay.row("Cost"),
        lay.panel(
            "stat", "Characters charged (time range)",
            "Characters the Translator API charged in the time range (increase of the per-source asyncjob_characters_charged_total, right across exporter restarts).",
            "short", [target(charged, "characters", instant=True)],
            (6, 8), defaults={"decimals": 0}, options=STAT_OPTIONS,
        ),
        lay.panel(
            "stat", "Estimated translation cost (time range)",
            f"Characters charged in the time range times the price variable ${PRICE_VARIABLE} at the top of the dashboard (USD per million characters; 15 is Translator's S1 document translation list price). Set it to your tier.",
            "currencyUSD", [target(f"{charged} / 1e6 * ${PRICE_VARIABLE}", "cost", instant=True)],
            (6, 8), defaults={"decimals": 2}, options=STAT_OPTIONS,
        ),
        lay.panel(
            "timeseries", "Characters charged per day",
            "Characters the Translator API charged each day (UTC) of the last 7 days, by source.",
            "short", [target(f"sum by (source) (increase(asyncjob_characters_charged_total{{{SOURCE_SEL}}}[$__interval]))", "{{source}}")],
            (12, 8), defaults=bars, **per_day,
        ),
        lay.panel(
            "bargauge", "Tokens used (time range), by provider and kind",
            "Tokens the selected sources' jobs used in the time range (increase of the per-source asyncjob_source_tokens_total, right across exporter restarts and after jobs leave): input and output of LLM batches (where the API reports usage), trained of fine-tuning jobs.",
            "short", [target(f"sum by (provider, kind) (increase(asyncjob_source_tokens_total{{{SOURCE_SEL}}}[$__range]))", "{{provider}} {{kind}}", instant=True)],
            (24, 6), options={"displayMode": "gradient", "orientation": "horizontal", "reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        lay.row("Polling and upstream"),
        lay.panel(
            "timeseries", "Poll error ratio",
            "Share of upstream requests (polls and listings, retries included) that failed, per source.",
            "percentunit",
            [target(f"sum by (source) (rate(asyncjob_request_errors_total{{{SOURCE_SEL}}}[$__rate_interval]))\n/ (sum by (source) (rate(asyncjob_requests_total{{{SOURCE_SEL}}}[$__rate_interval])) > 0)", "{{source}}")],
            (8, 8), defaults={"min": 0, "max": 1},
        ),
        lay.panel(
            "timeseries", "Failing polls by reason",
            "Jobs whose latest poll failed, by source and reason (asyncjob_last_poll_error_info). A job that finished is polled no more and never counts here.",
            "none", [target(f"count by (source, reason) (asyncjob_last_poll_error_info{{{SOURCE_SEL}}})", "{{source}} {{reason}}")],
            (8, 8), defaults={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 30}},
        ),
        lay.panel(
            "timeseries", "Upstream errors by reason",
            "Failed upstream requests per second, by source and reason (auth, not_found, throttled, timeout, connection, server_error, client_error, bad_response).",
            "reqps", [target(f"sum by (source, reason) (rate(asyncjob_request_errors_total{{{SOURCE_SEL}}}[$__rate_interval]))", "{{source}} {{reason}}")], (8, 8),
        ),
        lay.panel(
            "timeseries", "Upstream request rate",
            "HTTP requests the exporter sends to each source's API, retries included.",
            "reqps", [target(f"sum by (source) (rate(asyncjob_requests_total{{{SOURCE_SEL}}}[$__rate_interval]))", "{{source}}")], (12, 8),
        ),
        lay.panel(
            "timeseries", "Upstream latency",
            "Median and 99th percentile of upstream request latency per source, from asyncjob_request_duration_seconds.",
            "s",
            [
                target(f"histogram_quantile(0.5, sum by (source, le) (rate(asyncjob_request_duration_seconds_bucket{{{SOURCE_SEL}}}[$__rate_interval])))", "p50 {{source}}", "A"),
                target(f"histogram_quantile(0.99, sum by (source, le) (rate(asyncjob_request_duration_seconds_bucket{{{SOURCE_SEL}}}[$__rate_interval])))", "p99 {{source}}", "B"),
            ],
            (12, 8),
        ),
        lay.row("Exporter"),
        up_timeline(
            lay, "Exporter up",
            "Whether Prometheus could scrape each exporter process (each shard, when sharded).",
            f"min by (instance) (up{{{OWN}}})", "{{instance}}", (6, 6), ("down", "up"),
        ),
        up_timeline(
            lay, "Config reloads",
            "Whether each exporter process's latest configuration reload succeeded; after a failed one the previous configuration keeps running.",
            f"min by (instance) (asyncjob_config_last_reload_successful{{{SCRAPE}}})", "{{instance}}", (6, 6), ("failed", "ok"),
        ),
        *(
            lay.panel("timeseries", title, description, unit, [target(expr, "{{instance}}")], (6, 6))
            for title, description, unit, expr in PER_PROCESS
        ),
        lay.panel(
            "timeseries", "Tracked jobs",
            "Jobs the exporter tracks per source, however they came (config, discovery, jobs API, webhooks).",
            "none", [target(f"sum by (source) (asyncjob_tracked_jobs{{{SOURCE_SEL}}})", "{{source}}")], (6, 6),
        ),
        lay.panel(
            "stat", "Jobs refused at max_jobs (time range)",
            "Job IDs refused in the time range because their source was at its max_jobs, by source.",
            "none", [target(f'sum by (source) (increase(asyncjob_jobs_rejected_total{{reason="limit", {SOURCE_SEL}}}[$__range]))', "{{source}}", instant=True)],
            (6, 6), defaults={"decimals": 0}, options=STAT_OPTIONS,
        ),
    ]  # fmt: skip
    price = {
        "name": PRICE_VARIABLE,
        "label": "Price per million characters (USD)",
        "description": "What your Translator tier charges per million characters, for the cost panel.",
        "type": "textbox",
        "query": "15",
        "current": {"text": "15", "value": "15"},
        "options": [{"selected": True, "text": "15", "value": "15"}],
        "hide": 0,
    }
    return dashboard(
        "asyncjob-overview",
        "asyncjob-exporter / Overview",
        "Every long-running AI job the exporter watches, at any number of jobs: states, the jobs that need attention, durations, translation cost, polling and the exporter's own health.",
        panels,
        [price],
    )


def job_detail() -> dict[str, Any]:
    lay = Layout()
    overall = f'asyncjob_progress_ratio{{phase="overall", {SEL}}}'
    finished = in_state(FINISHED, SEL)
    panels = [
        lay.row("Job"),
        lay.panel(
            "stat", "State", "The job's canonical state now.",
            "none", [target(state_code("job_id"), "{{job_id}}", instant=True)], (4, 5),
            defaults={"mappings": STATE_MAPPINGS, "color": {"mode": "thresholds"}},
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background", "graphMode": "none"},
        ),
        lay.panel(
            "stat", "Age, or duration once finished",
            "Time since the API created the job; once it finished, created to finished (it stops growing). Empty for a finished job without a finish time (a Stable Diffusion fine-tune first seen finished).",
            "s",
            [target(f"max by (job_id) (\n  (asyncjob_finished_timestamp_seconds{{{SEL}}} - asyncjob_created_timestamp_seconds{{{SEL}}})\n  or\n  ((time() - asyncjob_created_timestamp_seconds{{{SEL}}}) unless on ({JOB_KEY}) {finished})\n)", "{{job_id}}", instant=True)],
            (4, 5), options=STAT_OPTIONS,
        ),
        *(
            lay.panel(
                "stat", title, description, "dateTimeAsIso",
                [target(f"max by (job_id) ({metric}{{{SEL}}}) * 1000", "{{job_id}}", instant=True)],
                (4, 5), options=STAT_OPTIONS,
            )
            for title, description, metric in (
                ("Created", "When the API created the job.", "asyncjob_created_timestamp_seconds"),
                ("Finished", "When the job finished (asyncjob_finished_timestamp_seconds); empty while it runs.",
                 "asyncjob_finished_timestamp_seconds"),
                ("Projected completion (API estimate)",
                 "When the API expects the job to finish (training jobs, Stable Diffusion fine-tunes).",
                 "asyncjob_estimated_completion_timestamp_seconds"),
            )
        ),
        lay.panel(
            "stat", "Projected completion (observed rate)",
            "When the job would finish if it kept the progress rate of the last 30 minutes; empty while it is not moving.",
            "dateTimeAsIso",
            [target(f"max by (job_id) (time() + (1 - {overall}) / (deriv({overall}[30m]) > 0)) * 1000", "{{job_id}}", instant=True)],
            (4, 5), options=STAT_OPTIONS,
        ),
        lay.row("Progress"),
        lay.panel(
            "timeseries", "Progress by phase",
            "Progress over time: overall, and training / evaluation for training jobs.",
            "percentunit", [target(f"max by (job_id, phase) (asyncjob_progress_ratio{{{SEL}}})", "{{job_id}} {{phase}}")], (18, 8),
            defaults={"min": 0, "max": 1},
        ),
        lay.panel(
            "stat", "Characters charged",
            "Characters the Translator API has charged for this batch so far (its own running total, asyncjob_translation_characters_charged_total).",
            "short", [target(f"max by (job_id) (asyncjob_translation_characters_charged_total{{{SEL}}})", "{{job_id}}", instant=True)],
            (6, 8), defaults={"decimals": 0}, options=STAT_OPTIONS,
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
        lay.row("Polling"),
        up_timeline(
            lay, "Poll health",
            "Whether the exporter's latest poll of the job succeeded, over time.",
            f"max by (job_id) (asyncjob_up{{{SEL}}})", "{{job_id}}", (12, 6), ("failing", "ok"),
        ),
        lay.panel(
            "timeseries", "Time since last successful poll",
            "Seconds since the exporter last polled the job successfully, while it is unfinished; it grows while polls fail. A finished job is polled no more, so the line ends when the job does.",
            "s", [target(f"max by (job_id) (\n  (time() - asyncjob_last_poll_success_timestamp_seconds{{{SEL}}})\n  unless on ({JOB_KEY}) {finished}\n)", "{{job_id}}")], (12, 6),
        ),
        lay.panel(
            "table", "Failing polls",
            "The job's latest poll failure, with the reason (asyncjob_last_poll_error_info); empty while its polls succeed.",
            "none", [target(f"max by (source, job_id, reason) (asyncjob_last_poll_error_info{{{SEL}}})", table=True)], (24, 5),
            transformations=columns({"job_id": "Job ID", "source": "Source", "reason": "Reason"}, hide=("Value",)),
        ),
    ]  # fmt: skip
    return dashboard(
        "asyncjob-job",
        "asyncjob-exporter / Job",
        "One job in depth: state, age, progress per phase, projected completion, task and document breakdown, errors and poll health.",
        panels,
        [],
        with_job_id=True,
    )


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the rules' expressions) as blocks, as they read best."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    )


_Dumper.add_representer(str, _string)


def recording_rules() -> str:
    header = (
        "# Generated by grafana/generate.py from monitoring.yaml; do not edit.\n"
        "# The recording rules the Overview dashboard reads: what would otherwise aggregate or join\n"
        "# every job's series on each refresh. Joins whose other side is a handful of series (the\n"
        "# jobs whose polls fail, a top 10) stay in the panels.\n"
    )
    rules = []
    for name, expr, why in RULES:
        rules.append({"record": name, "expr": expr})
        header += f"# - {name}:\n#   {why}\n"
    groups = {"groups": [{"name": "asyncjob-recording", "rules": rules}]}
    return header + yaml.dump(groups, Dumper=_Dumper, sort_keys=False, width=1000)


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


OUTPUTS = {
    OUT / "asyncjob-overview.json": lambda: render(overview),
    OUT / "asyncjob-job.json": lambda: render(job_detail),
    RECORDING_RULES: recording_rules,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for path, build in OUTPUTS.items():
        text = build()
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path.relative_to(REPO)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
